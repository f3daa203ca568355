#include "bindings/registry.hpp"

namespace fastcache::bindings {

void register_codec(pybind11::module_& /*m*/) {}

}  // namespace fastcache::bindings
