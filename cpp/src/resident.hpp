// Give memory the process no longer uses back to the system, as the Python backends do
// (segvol_rt.backends.resident; the rules and their measurements are documented there):
//
// * drop_mapped_pages: the resident pages of this process's read-only mappings of the
//   named files (OpenVINO maps a graph's or a cached blob's weights, repacks most of them
//   while compiling and keeps the mapped originals, so the weights were resident twice).
//   madvise(MADV_DONTNEED) gives them back to the page cache; a page still used is read
//   back from the file on its next access, so nothing computed changes. Only mappings that
//   cannot hold data of their own are touched: no 'w' in their permissions and no
//   anonymous (copy-on-write) pages in /proc/self/smaps.
// * trim_heap: the free pages of the C heap (glibc's malloc_trim(0)): what loading a
//   graph or an arena's shrinking left free under glibc's mmap threshold.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace segvol::detail {

// One range of /proc/self/smaps: [start, end) of `path`, its permissions and anonymous KiB.
struct Mapping {
    std::uintptr_t start = 0, end = 0;
    std::string perms, path;
    long long anonymous_kib = 0;
};

// The file-backed ranges of a /proc/<pid>/smaps text.
std::vector<Mapping> file_mappings(const std::string& smaps);

// The mappings of `files` (paths compared as given: the caller resolves them) that hold
// nothing but the file's own pages.
std::vector<Mapping> droppable(const std::vector<Mapping>& mappings, const std::vector<std::string>& files);

// Drops the resident pages of this process's read-only mappings of `files` (each resolved
// with realpath; one that does not exist is skipped); returns the bytes of the ranges
// advised (0 elsewhere than Linux, or where /proc/self/smaps cannot be read).
std::size_t drop_mapped_pages(const std::vector<std::string>& files);

// Gives the C heap's free pages back to the system; false where the C library has no
// malloc_trim (anything but glibc).
bool trim_heap();

}  // namespace segvol::detail
