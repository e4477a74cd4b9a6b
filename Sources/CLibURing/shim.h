// liburing as a system library. Swift code never imports this module: its header defines feature
// macros and its own copies of kernel structs that clash with Glibc and SystemPackage. Only the .c
// files of CShmLinux include <liburing.h>; this target exists so that SwiftPM links -luring.
#include <liburing.h>
