// Small host helpers shared by the SDK's sources: a regular-file test and size, the user
// cache's folder, the cores this process may run on, UTF-8 encoding of one code point (utf8proc), and
// Python's str.strip() of ASCII whitespace.
#pragma once

#include <sched.h>
#include <sys/stat.h>
#include <utf8proc.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <string>
#include <thread>

#include "generated/shared_constants.hpp"

namespace segvol::detail {

inline bool is_file(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Bytes of file `p`; -1 where it cannot be read.
inline long long file_size(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0 ? (long long)st.st_size : -1;
}

// mkdir -p `dir` (mode 0755): 0 once it is a directory, else the errno that stopped it
// (EEXIST for a file in the way, as Python's FileExistsError).
inline int make_dirs(const std::string& dir) {
    for (size_t at = 0; at != std::string::npos;) {
        at = dir.find('/', at + 1);
        if (mkdir(dir.substr(0, at).c_str(), 0755) != 0 && errno != EEXIST) return errno;
    }
    struct stat st;  // a file on the way fails the next mkdir; one at the end is found here
    return stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode) ? 0 : EEXIST;
}

// segvol-rt's user cache (segvol_rt.io.user_cache.cache_root): $SEGVOL_RT_CACHE, else
// ~/.cache/segvol-rt; empty where neither it nor HOME is set.
inline std::string user_cache_root() {
    if (const char* env = std::getenv(shared::CACHE_ENV); env && *env) return env;
    if (const char* home = std::getenv("HOME"); home && *home) return std::string(home) + "/.cache/segvol-rt";
    return "";
}

// The CPUs of this process's affinity mask (what `taskset` or a container allows), at least 1.
inline int cpu_cores() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
    return (int)std::max(1u, std::thread::hardware_concurrency());
}

// UTF-8 of one code point; empty for a value that is not one.
inline std::string encode_utf8(int32_t cp) {
    utf8proc_uint8_t buf[4];
    utf8proc_ssize_t n = utf8proc_encode_char(cp, buf);
    return std::string((const char*)buf, (size_t)n);
}

// `s` without leading and trailing ASCII whitespace (Python's str.strip() on ASCII text).
inline std::string strip(const std::string& s) {
    size_t a = s.find_first_not_of(" \t\n\r\f\v"), b = s.find_last_not_of(" \t\n\r\f\v");
    return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

}  // namespace segvol::detail
