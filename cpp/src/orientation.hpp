// Reorientation of a scan to the voxel order a model declares (the manifest's
// voxel_orientation), as segvol_rt.pipeline.geometry.Reorient: nibabel's
// io_orientation of the affine (oblique affines take the closest axes),
// ornt_transform to the axis codes, then flips and a permutation of the voxels.
// Scan arrays are (I, J, K) with i fastest; points and boxes are scan voxel
// indices (i, j, k). Every map here is an exact bijection of voxels.
#pragma once

#include <array>
#include <optional>
#include <string>

#include "ops.hpp"

namespace segvol::detail {

// The axis codes to reorient each scan to, or nullopt for its stored order
// (segvol_rt.pipeline.geometry.model_orientation): no request = the declared
// orientation (none: the stored order), "stored" = none, else validated axis codes.
std::optional<std::string> model_orientation(const std::optional<std::string>& requested,
                                             const std::optional<std::string>& declared);

// "" when `codes` (upper-cased) are three axis codes, one of L/R, A/P, S/I each; else the one-line error.
std::string orientation_codes_problem(const std::string& codes);

// Scan axes -> target axes: input axis a goes to output axis `axis[a]`, reversed when flip[a] < 0
// (nibabel's ornt rows).
struct Orientation {
    std::array<i64, 3> in_shape{0, 0, 0};
    std::array<int, 3> axis{0, 1, 2};
    std::array<int, 3> flip{1, 1, 1};

    bool identity() const;
    std::array<i64, 3> out_shape() const;
    std::array<i64, 3> forward(const std::array<i64, 3>& p) const;  // scan voxel -> target voxel
    std::array<i64, 6> forward_box(const std::array<i64, 6>& b) const;  // inclusive boxes, corners mapped
    // Copy a scan-ordered volume (in_shape, i fastest) into `out` in target order (out_shape,
    // first axis fastest); `inverse`: `in` in target order into `out` in scan order.
    template <typename T>
    void copy(const T* in, T* out, bool inverse) const;
};

// The reorientation of a scan of `dims` with voxel-to-world `affine` (row-major 4x4, finite) to
// `codes`; fails (SEGVOL_ERR_INVALID_ARGUMENT, Python's words) on a degenerate affine.
Orientation orientation_from_affine(const double* affine, const std::array<i64, 3>& dims, const std::string& codes);

// nibabel.orientations.io_orientation of a non-degenerate affine: per voxel axis, the world axis
// (0 = x/L-R, 1 = y/P-A, 2 = z/I-S) closest to it and its sign.
void io_orientation(const double* affine, std::array<int, 3>* axis, std::array<int, 3>* flip);

// "" when the affine's 3x3 part has directions (its smallest singular value above
// DEGENERATE_AFFINE_RATIO of its largest, as segvol_rt.io.volume_checks.affine_problem);
// else Python's degenerate-affine line.
std::string affine_problem(const double* affine);

}  // namespace segvol::detail
