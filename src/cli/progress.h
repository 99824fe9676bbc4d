// Progress lines on a terminal: redrawn in place on stderr when it is a TTY, silent otherwise.
#pragma once

#include <string>

namespace corelocker::cli {

class Progress {
 public:
  Progress();
  ~Progress();
  // Redraws the status line (no-op when stderr is not a terminal).
  void update(const std::string& line);
  // Ends the status line, leaving `line` on screen (no-op when not a terminal).
  void finish(const std::string& line);
  bool active() const { return tty_; }

 private:
  bool tty_;
  bool drawn_ = false;
};

// "12.3s", "4m05s", "1h02m".
std::string format_duration(double seconds);
// A fixed-width bar: [#####.....]
std::string bar(double fraction, int width = 24);

}  // namespace corelocker::cli
