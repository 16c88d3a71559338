#include <hop/hop.hpp>
#include <cstdio>
int main() { hop::cpu_pool pool{2}; std::printf("%d\n", pool.submit([] { return 1; }).get()); }
