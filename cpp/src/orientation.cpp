// Reorientation (segvol_rt/pipeline/geometry.py Reorient, nibabel.orientations); golden-tested
// against nibabel and the Python runtime (tests/cpp/test_cpp_orientation.py).
#include "orientation.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <regex>

#include "errors.hpp"
#include "generated/shared_constants.hpp"
#include "system.hpp"

namespace segvol::detail {

namespace {

using Mat3 = std::array<std::array<double, 3>, 3>;  // [row][column]

std::string upper(std::string s) {
    for (char& c : s) c = (char)std::toupper((unsigned char)c);
    return s;
}

// Python's repr of a str, for the shared error lines (ASCII text; other bytes kept as they are).
std::string py_repr(const std::string& s) {
    char q = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
    std::string out(1, q);
    for (char c : s) {
        if (c == '\\' || c == q) out += '\\', out += c;
        else if (c == '\n') out += "\\n";
        else if (c == '\t') out += "\\t";
        else if (c == '\r') out += "\\r";
        else out += c;
    }
    return out + q;
}

// One-sided Jacobi SVD of a 3x3 matrix: a = u diag(s) v^T with u, v orthogonal (u's columns
// for zero singular values are left unnormalised; only non-degenerate matrices use u).
void svd3(const Mat3& a, Mat3* u, std::array<double, 3>* s, Mat3* v) {
    *u = a;
    *v = Mat3{{{1, 0, 0}, {0, 1, 0}, {0, 0, 1}}};
    for (int sweep = 0; sweep < 60; ++sweep) {
        bool rotated = false;
        for (int p = 0; p < 2; ++p)
            for (int q = p + 1; q < 3; ++q) {
                double alpha = 0, beta = 0, gamma = 0;
                for (int k = 0; k < 3; ++k) {
                    alpha += (*u)[k][p] * (*u)[k][p];
                    beta += (*u)[k][q] * (*u)[k][q];
                    gamma += (*u)[k][p] * (*u)[k][q];
                }
                if (gamma == 0 || std::fabs(gamma) <= DBL_EPSILON * std::sqrt(alpha * beta)) continue;
                rotated = true;
                double zeta = (beta - alpha) / (2 * gamma);
                double t = (zeta >= 0 ? 1.0 : -1.0) / (std::fabs(zeta) + std::sqrt(1 + zeta * zeta));
                double c = 1 / std::sqrt(1 + t * t), sn = c * t;
                for (Mat3* m : {u, v})
                    for (int k = 0; k < 3; ++k) {
                        double mp = (*m)[k][p], mq = (*m)[k][q];
                        (*m)[k][p] = c * mp - sn * mq;
                        (*m)[k][q] = sn * mp + c * mq;
                    }
            }
        if (!rotated) break;
    }
    for (int j = 0; j < 3; ++j) {
        double n = std::sqrt((*u)[0][j] * (*u)[0][j] + (*u)[1][j] * (*u)[1][j] + (*u)[2][j] * (*u)[2][j]);
        (*s)[j] = n;
        if (n > 0)
            for (int k = 0; k < 3; ++k) (*u)[k][j] /= n;
    }
}

Mat3 upper_left(const double* affine) {
    Mat3 m;
    for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c) m[(size_t)r][(size_t)c] = affine[r * 4 + c];
    return m;
}

}  // namespace

std::string orientation_codes_problem(const std::string& codes) {
    static const std::regex pattern(shared::ORIENTATION_PATTERN, std::regex::ECMAScript);
    // every match is three characters; libstdc++'s regex recurses per character, so a long
    // string (a caller's, or a manifest's) would overflow the stack before failing to match
    const std::string stripped = strip(codes);
    if (stripped.size() == 3 && std::regex_match(upper(stripped), pattern)) return "";
    return "orientation must be three axis codes, one of L/R, A/P and S/I each (e.g. RAS), got " + py_repr(codes);
}

std::optional<std::string> model_orientation(const std::optional<std::string>& requested, const std::optional<std::string>& declared) {
    if (!requested) return declared;
    std::string r = strip(*requested);
    if (r.empty())
        fail(SEGVOL_ERR_INVALID_ARGUMENT, "reorient must be axis codes such as RAS or " + py_repr(shared::STORED_ORDER) + ", got " +
                                              py_repr(*requested));
    std::string lower = r;
    for (char& c : lower) c = (char)std::tolower((unsigned char)c);
    if (lower == shared::STORED_ORDER) return std::nullopt;
    if (std::string problem = orientation_codes_problem(*requested); !problem.empty())
        fail(SEGVOL_ERR_INVALID_ARGUMENT, "reorient: " + problem);
    return upper(r);
}

std::string affine_problem(const double* affine) {
    Mat3 u, v;
    std::array<double, 3> s;
    svd3(upper_left(affine), &u, &s, &v);
    double hi = *std::max_element(s.begin(), s.end()), lo = *std::min_element(s.begin(), s.end());
    if (hi != 0 && lo > hi * shared::DEGENERATE_AFFINE_RATIO) return "";
    std::string rows;
    char buf[64];
    for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c) {
            std::snprintf(buf, sizeof buf, "%g", affine[r * 4 + c]);
            rows += (c ? ", " : (r ? "; " : "")) + std::string(buf);
        }
    return "the voxel-to-world affine is degenerate (its 3x3 part [" + rows + "] is singular), so the voxel axes have no direction";
}

void io_orientation(const double* affine, std::array<int, 3>* axis, std::array<int, 3>* flip) {
    // nibabel: columns scaled to unit length, then the closest shear-free matrix (the polar
    // factor u v^T); each voxel axis takes the world axis it changes most, first come first served
    Mat3 rs = upper_left(affine);
    for (int c = 0; c < 3; ++c) {
        double n = std::sqrt(rs[0][(size_t)c] * rs[0][(size_t)c] + rs[1][(size_t)c] * rs[1][(size_t)c] + rs[2][(size_t)c] * rs[2][(size_t)c]);
        if (n == 0) n = 1;
        for (int r = 0; r < 3; ++r) rs[(size_t)r][(size_t)c] /= n;
    }
    Mat3 u, v, r{};
    std::array<double, 3> s;
    svd3(rs, &u, &s, &v);
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            for (int k = 0; k < 3; ++k) r[(size_t)i][(size_t)j] += u[(size_t)i][(size_t)k] * v[(size_t)j][(size_t)k];
    for (int in = 0; in < 3; ++in) {
        int out = 0;
        for (int k = 1; k < 3; ++k)
            if (std::fabs(r[(size_t)k][(size_t)in]) > std::fabs(r[(size_t)out][(size_t)in])) out = k;
        (*axis)[(size_t)in] = out;
        (*flip)[(size_t)in] = r[(size_t)out][(size_t)in] < 0 ? -1 : 1;
        r[(size_t)out] = {0, 0, 0};
    }
}

Orientation orientation_from_affine(const double* affine, const std::array<i64, 3>& dims, const std::string& codes) {
    if (std::string problem = affine_problem(affine); !problem.empty())
        fail(SEGVOL_ERR_INVALID_ARGUMENT, "cannot reorient to " + py_repr(codes) + ": " + problem);
    std::array<int, 3> start_axis, start_flip;
    io_orientation(affine, &start_axis, &start_flip);
    // nibabel's axcodes2ornt (labels L/R, P/A, I/S) and ornt_transform
    static const char* const pairs[3] = {"LR", "PA", "IS"};
    Orientation o;
    o.in_shape = dims;
    for (int end = 0; end < 3; ++end) {
        int world = 0;
        while (pairs[world][0] != codes[(size_t)end] && pairs[world][1] != codes[(size_t)end]) ++world;
        int end_flip = pairs[world][0] == codes[(size_t)end] ? -1 : 1;
        for (int a = 0; a < 3; ++a)
            if (start_axis[(size_t)a] == world) {
                o.axis[(size_t)a] = end;
                o.flip[(size_t)a] = start_flip[(size_t)a] == end_flip ? 1 : -1;
            }
    }
    return o;
}

bool Orientation::identity() const { return axis == std::array<int, 3>{0, 1, 2} && flip == std::array<int, 3>{1, 1, 1}; }

std::array<i64, 3> Orientation::out_shape() const {
    std::array<i64, 3> out{};
    for (int a = 0; a < 3; ++a) out[(size_t)axis[(size_t)a]] = in_shape[(size_t)a];
    return out;
}

std::array<i64, 3> Orientation::forward(const std::array<i64, 3>& p) const {
    std::array<i64, 3> out{};
    for (size_t a = 0; a < 3; ++a) out[(size_t)axis[a]] = flip[a] < 0 ? in_shape[a] - 1 - p[a] : p[a];
    return out;
}

std::array<i64, 6> Orientation::forward_box(const std::array<i64, 6>& b) const {
    std::array<i64, 3> lo = forward({b[0], b[1], b[2]}), hi = forward({b[3], b[4], b[5]});
    return {std::min(lo[0], hi[0]), std::min(lo[1], hi[1]), std::min(lo[2], hi[2]),
            std::max(lo[0], hi[0]), std::max(lo[1], hi[1]), std::max(lo[2], hi[2])};
}

template <typename T>
void Orientation::copy(const T* in, T* out, bool inverse) const {
    // target voxel (t0, t1, t2), t0 fastest, reads scan voxel base + sum(t_k * step_k)
    const std::array<i64, 3> stride{1, in_shape[0], in_shape[0] * in_shape[1]}, t = out_shape();
    std::array<i64, 3> step{};
    i64 base = 0;
    for (size_t a = 0; a < 3; ++a) {
        step[(size_t)axis[a]] = flip[a] < 0 ? -stride[a] : stride[a];
        if (flip[a] < 0) base += (in_shape[a] - 1) * stride[a];
    }
    i64 at = 0;
    for (i64 c = 0; c < t[2]; ++c)
        for (i64 b = 0; b < t[1]; ++b) {
            i64 scan = base + c * step[2] + b * step[1];
            if (!inverse)
                for (i64 a = 0; a < t[0]; ++a, ++at) out[at] = in[scan + a * step[0]];
            else
                for (i64 a = 0; a < t[0]; ++a, ++at) out[scan + a * step[0]] = in[at];
        }
}

template void Orientation::copy<float>(const float*, float*, bool) const;
template void Orientation::copy<unsigned char>(const unsigned char*, unsigned char*, bool) const;

}  // namespace segvol::detail
