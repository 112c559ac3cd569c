/* The version string ferry reports (set by CMake from project()). */
const char *launch_version(void);
const char *launch_version(void) { return FERRY_VERSION; }
