/// ShmRing's version, as `shmring --version` prints it.
public enum ShmRingVersion {
    /// The version of this build of the package.
    public static let current = "0.1.0"
}
