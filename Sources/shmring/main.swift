import ShmRing
print(ShmRingVersion.current)
