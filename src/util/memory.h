#pragma once

namespace corelocker {

// Gives the pages of freed heap memory back to the kernel (glibc: malloc_trim(0); elsewhere
// nothing). Called after a phase whose scratch buffers are freed before larger lasting ones are
// allocated: glibc keeps freed small chunks resident, and the lasting buffers would otherwise land
// on fresh pages, so the peak would be their size plus the scratch.
void release_free_heap();

}  // namespace corelocker
