// The SDK's one exception type inside the library; the C ABI turns it into a
// status code and a one-line message (never an exception across the boundary).
#pragma once

#include <stdexcept>
#include <string>

#include "segvol_rt/segvol_rt.h"

namespace segvol::detail {

class Error : public std::runtime_error {
   public:
    Error(segvol_status code, const std::string& msg) : std::runtime_error(msg), code_(code) {}
    segvol_status code() const { return code_; }

   private:
    segvol_status code_;
};

[[noreturn]] inline void fail(segvol_status code, const std::string& msg) { throw Error(code, msg); }

}  // namespace segvol::detail
