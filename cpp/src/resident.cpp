#include "resident.hpp"

#include <sys/mman.h>

#include <climits>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace segvol::detail {

namespace {

// A smaps range header: "start-end perms offset dev inode [path]" (the path may hold spaces).
bool parse_header(const std::string& line, Mapping* m) {
    std::istringstream in(line);
    std::string range, offset, dev, inode;
    if (!(in >> range >> m->perms >> offset >> dev >> inode)) return false;
    size_t dash = range.find('-');
    if (dash == std::string::npos || range.back() == ':') return false;
    char* end = nullptr;
    m->start = (std::uintptr_t)std::strtoull(range.c_str(), &end, 16);
    if (end != range.c_str() + dash) return false;
    m->end = (std::uintptr_t)std::strtoull(range.c_str() + dash + 1, &end, 16);
    if (*end != '\0') return false;
    std::string rest;
    std::getline(in, rest);
    size_t a = rest.find_first_not_of(" \t"), b = rest.find_last_not_of(" \t\r");
    m->path = a == std::string::npos ? std::string() : rest.substr(a, b - a + 1);
    m->anonymous_kib = 0;
    return true;
}

std::string resolved(const std::string& path) {
    char buf[PATH_MAX];
    return realpath(path.c_str(), buf) ? std::string(buf) : std::string();
}

}  // namespace

std::vector<Mapping> file_mappings(const std::string& smaps) {
    std::vector<Mapping> out;
    Mapping current;
    bool open = false;
    std::istringstream lines(smaps);
    for (std::string line; std::getline(lines, line);) {
        Mapping next;
        if (parse_header(line, &next)) {
            if (open && !current.path.empty()) out.push_back(current);
            current = next;
            open = true;
        } else if (open && line.rfind("Anonymous:", 0) == 0) {
            current.anonymous_kib = std::atoll(line.c_str() + 10);
        }
    }
    if (open && !current.path.empty()) out.push_back(current);
    return out;
}

std::vector<Mapping> droppable(const std::vector<Mapping>& mappings, const std::vector<std::string>& files) {
    std::set<std::string> wanted(files.begin(), files.end());
    std::vector<Mapping> out;
    for (const Mapping& m : mappings)
        if (wanted.count(m.path) && m.perms.find('w') == std::string::npos && m.anonymous_kib == 0) out.push_back(m);
    return out;
}

std::size_t drop_mapped_pages(const std::vector<std::string>& files) {
#if defined(__linux__)
    std::vector<std::string> paths;
    for (const std::string& f : files)
        if (std::string r = resolved(f); !r.empty()) paths.push_back(r);
    if (paths.empty()) return 0;
    std::ifstream in("/proc/self/smaps");
    if (!in) return 0;
    std::stringstream text;
    text << in.rdbuf();
    std::size_t done = 0;
    for (const Mapping& m : droppable(file_mappings(text.str()), paths))
        if (madvise(reinterpret_cast<void*>(m.start), m.end - m.start, MADV_DONTNEED) == 0) done += m.end - m.start;
    return done;
#else
    (void)files;
    return 0;
#endif
}

bool trim_heap() {
#if defined(__GLIBC__)
    malloc_trim(0);
    return true;
#else
    return false;
#endif
}

}  // namespace segvol::detail
