#include "distributed/group.h"

#include <signal.h>

#include <algorithm>
#include <condition_variable>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "util/error.h"

namespace corelocker {

namespace {

constexpr int64_t kBucketBytes = int64_t{16} << 20;
// A rank adds to its heartbeat counter this often; one that has not moved over three beats
// is taken for gone.
constexpr std::chrono::milliseconds kBeat{500};

int env_int(const std::function<const char*(const char*)>& env, const char* name, int low,
            int fallback, bool required) {
  const char* v = env(name);
  if (v == nullptr || *v == '\0') {
    if (required) throw UsageError("environment variable " + std::string(name) + " is not set");
    return fallback;
  }
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (*end != '\0' || n < low || n > 1'000'000) {
    throw UsageError("environment variable " + std::string(name) + "='" + v +
                     "': expected an integer >= " + std::to_string(low));
  }
  return static_cast<int>(n);
}

std::string first_line(const std::exception& e) {
  const auto* c10 = dynamic_cast<const c10::Error*>(&e);
  std::string s = c10 ? c10->what_without_backtrace() : e.what();
  const auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

std::string shorten(const std::string& s) {
  constexpr size_t kMax = 160;
  return s.size() <= kMax ? s : s.substr(0, kMax) + "...";
}

// Leaves a handler or an ignore someone else set in place.
void ignore_sigpipe_if_default() {
  struct sigaction current {};
  if (sigaction(SIGPIPE, nullptr, &current) != 0 || current.sa_handler != SIG_DFL) return;
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  sigaction(SIGPIPE, &ignore, nullptr);
}

std::string bytes_to_string(const std::vector<uint8_t>& v) { return {v.begin(), v.end()}; }

std::vector<uint8_t> string_to_bytes(const std::string& s) { return {s.begin(), s.end()}; }

// What two values of agree() differ in: the keys whose values differ when both are JSON objects,
// else the values themselves.
std::string difference(const std::string& theirs, const std::string& ours, int rank) {
  const auto a = nlohmann::json::parse(theirs, nullptr, /*allow_exceptions=*/false);
  const auto b = nlohmann::json::parse(ours, nullptr, /*allow_exceptions=*/false);
  if (a.is_object() && b.is_object()) {
    std::string out;
    auto add = [&](const std::string& key, const nlohmann::json& x, const nlohmann::json& y) {
      out += (out.empty() ? "" : ", ") + key + ": rank " + std::to_string(rank) + " has " +
             (x.is_null() ? std::string("none") : shorten(x.dump())) + ", rank 0 has " +
             (y.is_null() ? std::string("none") : shorten(y.dump()));
    };
    for (const auto& [k, v] : a.items()) {
      if (!b.contains(k) || b.at(k) != v) add(k, v, b.contains(k) ? b.at(k) : nlohmann::json());
    }
    for (const auto& [k, v] : b.items()) {
      if (!a.contains(k)) add(k, nlohmann::json(), v);
    }
    if (!out.empty()) return out;
  }
  return "rank " + std::to_string(rank) + " has '" + shorten(theirs) + "', rank 0 has '" +
         shorten(ours) + "'";
}

}  // namespace

std::optional<GroupConfig> group_config(const std::function<const char*(const char*)>& env) {
  GroupConfig c;
  const char* size_var = "WORLD_SIZE";
  c.size = env_int(env, size_var, 1, 1, /*required=*/false);
  if (c.size <= 1) return std::nullopt;
  const char* rank_var = "RANK";
  c.rank = env_int(env, rank_var, 0, 0, /*required=*/true);
  if (c.rank >= c.size) {
    throw UsageError("environment variable " + std::string(rank_var) + "=" +
                     std::to_string(c.rank) + ": must be below " + size_var + "=" +
                     std::to_string(c.size));
  }
  c.local_size = env_int(env, "LOCAL_WORLD_SIZE", 1, 1, false);
  const char* addr = env("MASTER_ADDR");
  if (addr == nullptr || *addr == '\0') {
    throw UsageError(std::string("environment variable MASTER_ADDR is not set (") + size_var + "=" +
                     std::to_string(c.size) + " asks for a group; its rank 0's host)");
  }
  c.master_addr = addr;
  c.master_port = env_int(env, "MASTER_PORT", 1, 0, /*required=*/true);
  if (c.master_port > 65535)
    throw UsageError("environment variable MASTER_PORT=" + std::to_string(c.master_port) +
                     ": not a port");
  const char* agent = env("TORCHELASTIC_USE_AGENT_STORE");
  c.agent_store = agent != nullptr && std::string(agent) == "True";
  if (const char* a = env("TORCHELASTIC_RESTART_COUNT"); a != nullptr && *a != '\0') c.attempt = a;
  if (const char* i = env("GLOO_SOCKET_IFNAME"); i != nullptr) c.interface = i;
  c.timeout = std::chrono::seconds(env_int(env, "CORELOCKER_DIST_TIMEOUT", 1, 120, false));
  return c;
}

struct Group::Impl {
  GroupConfig config;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  int64_t agreements = 0;
  int64_t queues = 0;

  // The heartbeat: its own store connection, on a detached thread that owns what it uses. A
  // store whose process is stopped never answers, so nothing waits for that thread to end.
  struct Heartbeat {
    c10::intrusive_ptr<c10d::Store> store;
    std::string key;
    std::mutex mutex;
    std::condition_variable cv;
    bool stopping = false;
  };
  std::shared_ptr<Heartbeat> heartbeat;

  std::string where() const {
    return config.master_addr + ":" + std::to_string(config.master_port);
  }

  c10::intrusive_ptr<c10d::Store> connect(bool serve) const {
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(config.master_port);
    o.isServer = serve;
    o.waitWorkers = false;
    o.timeout = config.timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(config.master_addr, o);
    return c10::make_intrusive<c10d::PrefixStore>("corelocker/" + config.attempt, tcp);
  }

  static std::string beat_key(int r) { return "beat/" + std::to_string(r); }

  static void beat(const std::shared_ptr<Heartbeat>& h) {
    for (;;) {
      try {
        h->store->add(h->key, 1);
      } catch (const std::exception&) {
        return;  // the store is gone; a failing collective says so
      }
      std::unique_lock<std::mutex> lock(h->mutex);
      if (h->cv.wait_for(lock, kBeat, [&h] { return h->stopping; })) return;
    }
  }

  // Why a collective or the store failed, naming the ranks whose heartbeat stopped.
  std::string diagnose(const std::string& what, const std::string& cause) {
    const std::string who = "rank " + std::to_string(config.rank) + " of " +
                            std::to_string(config.size) + ": " + what + " failed";
    // The counters, read twice three beats apart on a thread of their own: a stopped store
    // process never answers, and then this one stops waiting.
    auto reads = std::make_shared<std::promise<std::vector<int64_t>>>();
    auto answer = reads->get_future();
    std::thread([reads, read_store = store, n = config.size] {
      try {
        std::vector<int64_t> v(2 * n);
        for (int r = 0; r < n; ++r) v[r] = read_store->add(beat_key(r), 0);
        std::this_thread::sleep_for(3 * kBeat);
        for (int r = 0; r < n; ++r) v[n + r] = read_store->add(beat_key(r), 0);
        reads->set_value(std::move(v));
      } catch (...) {
        reads->set_exception(std::current_exception());
      }
    }).detach();
    const std::string store_owner =
        config.agent_store ? "torchrun's store at " + where()
                           : "rank 0, which serves the group's store at " + where() + ",";
    if (answer.wait_for(3 * kBeat + std::chrono::seconds(5)) != std::future_status::ready) {
      return who + ": " + store_owner + " does not answer (stuck or stopped) (" + cause + ")";
    }
    std::vector<int64_t> before(config.size), after(config.size);
    try {
      const std::vector<int64_t> v = answer.get();
      std::copy(v.begin(), v.begin() + config.size, before.begin());
      std::copy(v.begin() + config.size, v.end(), after.begin());
    } catch (const std::exception& e) {
      if (config.agent_store) {
        return who + ": " + store_owner + " is unreachable (" + first_line(e) +
               "); the launcher has probably stopped the group (" + cause + ")";
      }
      return who + ": " + store_owner + " is gone or stuck (killed, crashed, exited or stopped) (" +
             cause + ")";
    }
    std::string lost;
    for (int r = 0; r < config.size; ++r) {
      if (r != config.rank && after[r] == before[r])
        lost += (lost.empty() ? "" : ", ") + std::to_string(r);
    }
    if (!lost.empty()) {
      const bool one = lost.find(',') == std::string::npos;
      return who + ": rank" + (one ? " " : "s ") + lost + (one ? " is" : " are") +
             " gone (its heartbeat stopped: killed, crashed or stopped) (" + cause + ")";
    }
    return who + " while every rank's heartbeat goes on: a rank is stuck or slower than the " +
           std::to_string(config.timeout.count() / 1000) +
           " s timeout (CORELOCKER_DIST_TIMEOUT) allows (" + cause + ")";
  }

  template <class F>
  auto guarded(const std::string& what, F&& f) -> decltype(f()) {
    try {
      return f();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw Error(diagnose(what, first_line(e)));
    }
  }

  void allreduce(torch::Tensor& flat) {
    std::vector<at::Tensor> v{flat};
    guarded("a sum over the ranks", [&] { pg->allreduce(v)->wait(); });
  }
};

Group::Group(const GroupConfig& config) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.config = config;
  if (config.size < 1 || config.rank < 0 || config.rank >= config.size) {
    throw UsageError("group of " + std::to_string(config.size) + " ranks: rank " +
                     std::to_string(config.rank) + " is not one of them");
  }
  ignore_sigpipe_if_default();
  const std::string joining = "rank " + std::to_string(config.rank) + " of " +
                              std::to_string(config.size) + ": joining the group at " + m.where();
  try {
    m.store = m.connect(config.rank == 0 && !config.agent_store);
    m.store->set("joined/" + std::to_string(config.rank), string_to_bytes("1"));
  } catch (const std::exception& e) {
    throw Error(joining + ": cannot reach the store" +
                (config.agent_store || config.rank == 0 ? std::string()
                                                        : std::string(" (rank 0 serves it)")) +
                " (" + first_line(e) + ")");
  }
  try {
    auto options = c10d::ProcessGroupGloo::Options::create(config.timeout);
    options->devices.push_back(
        config.interface.empty()
            ? c10d::ProcessGroupGloo::createDefaultDevice()
            : c10d::ProcessGroupGloo::createDeviceForInterface(config.interface));
    m.pg = c10::make_intrusive<c10d::ProcessGroupGloo>(m.store, config.rank, config.size, options);
  } catch (const std::exception& e) {
    std::string missing;
    try {
      for (int r = 0; r < config.size; ++r) {
        if (!m.store->check({"joined/" + std::to_string(r)}))
          missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      }
    } catch (const std::exception&) {
      missing = "0 (its store is gone)";
    }
    throw Error(joining + ": " +
                (missing.empty() ? std::string("connecting to the other ranks failed")
                                 : "rank(s) " + missing + " did not join within " +
                                       std::to_string(config.timeout.count() / 1000) + " s") +
                " (" + first_line(e) + ")");
  }
  m.heartbeat = std::make_shared<Impl::Heartbeat>();
  m.heartbeat->store = m.connect(false);
  m.heartbeat->key = Impl::beat_key(config.rank);
  std::thread([h = m.heartbeat] { Impl::beat(h); }).detach();
}

Group::~Group() {
  if (const auto& h = impl_->heartbeat) {
    {
      std::lock_guard<std::mutex> lock(h->mutex);
      h->stopping = true;
    }
    h->cv.notify_all();
  }
}

int Group::rank() const { return impl_->config.rank; }
int Group::size() const { return impl_->config.size; }
const GroupConfig& Group::config() const { return impl_->config; }

void Group::sum(std::vector<torch::Tensor>& tensors) {
  torch::NoGradGuard no_grad;
  size_t i = 0;
  while (i < tensors.size()) {
    const auto dtype = tensors[i].scalar_type();
    size_t j = i;
    int64_t bytes = 0, numel = 0;
    while (j < tensors.size() && tensors[j].scalar_type() == dtype) {
      const int64_t b = tensors[j].numel() * tensors[j].element_size();
      if (j > i && bytes + b > kBucketBytes) break;
      bytes += b;
      numel += tensors[j].numel();
      ++j;
    }
    if (j == i + 1 && tensors[i].is_contiguous()) {
      impl_->allreduce(tensors[i]);
    } else {
      torch::Tensor flat = torch::empty({numel}, tensors[i].options());
      int64_t at = 0;
      for (size_t k = i; k < j; ++k) {
        flat.narrow(0, at, tensors[k].numel()).copy_(tensors[k].reshape({-1}));
        at += tensors[k].numel();
      }
      impl_->allreduce(flat);
      at = 0;
      for (size_t k = i; k < j; ++k) {
        tensors[k].copy_(flat.narrow(0, at, tensors[k].numel()).view(tensors[k].sizes()));
        at += tensors[k].numel();
      }
    }
    i = j;
  }
}

void Group::barrier() {
  impl_->guarded("waiting for every rank", [&] { impl_->pg->barrier()->wait(); });
}

void Group::agree(const std::string& what, const std::string& value) {
  Impl& m = *impl_;
  const std::string prefix = "agree/" + std::to_string(m.agreements++) + "/";
  std::vector<std::string> values(m.config.size);
  m.guarded("agreeing on " + what, [&] {
    m.store->set(prefix + std::to_string(m.config.rank), string_to_bytes(value));
    for (int r = 0; r < m.config.size; ++r)
      values[r] =
          r == m.config.rank ? value : bytes_to_string(m.store->get(prefix + std::to_string(r)));
  });
  for (int r = 1; r < m.config.size; ++r) {
    if (values[r] != values[0]) {
      throw UsageError("the ranks were given different " + what + ": " +
                       difference(values[r], values[0], r) +
                       " (every rank must run the same command on the same files)");
    }
  }
}

int64_t Group::fetch_add(const std::string& name, int64_t n) {
  return impl_->guarded("counter '" + name + "'",
                        [&] { return impl_->store->add("count/" + name, n) - n; });
}

Collective::JobQueue Group::open_queue(const std::string& name, int64_t count) {
  return {"queue/" + std::to_string(impl_->queues++) + "/" + name, count};
}

int64_t Group::next_job(const JobQueue& queue) {
  const int64_t job = fetch_add(queue.name, 1);
  if (job >= queue.count) return -1;
  impl_->guarded("taking job " + std::to_string(job) + " of " + queue.name, [&] {
    impl_->store->set(queue.name + "/" + std::to_string(job) + "/rank",
                      string_to_bytes(std::to_string(impl_->config.rank)));
  });
  return job;
}

void Group::post_result(const JobQueue& queue, int64_t job, const std::string& value) {
  impl_->guarded("posting job " + std::to_string(job) + " of " + queue.name, [&] {
    impl_->store->set(queue.name + "/" + std::to_string(job) + "/result", string_to_bytes(value));
  });
}

std::string Group::result(const JobQueue& queue, int64_t job) {
  Impl& m = *impl_;
  const std::string base = queue.name + "/" + std::to_string(job);
  const std::string what = "job " + std::to_string(job) + " of " + queue.name;
  const auto start = std::chrono::steady_clock::now();
  int64_t last_beat = -1;
  auto last_change = start;
  for (;;) {
    const auto now = std::chrono::steady_clock::now();
    std::optional<std::string> found;
    std::optional<int> taker;
    int64_t beat = 0;
    m.guarded("waiting for " + what, [&] {
      if (m.store->check({base + "/result"})) {
        found = bytes_to_string(m.store->get(base + "/result"));
      } else if (m.store->check({base + "/rank"})) {
        taker = std::stoi(bytes_to_string(m.store->get(base + "/rank")));
        beat = m.store->add(Impl::beat_key(*taker), 0);
      }
    });
    if (found) return *found;
    if (taker) {
      if (beat != last_beat) {
        last_beat = beat;
        last_change = now;
      } else if (now - last_change > 3 * kBeat + std::chrono::seconds(1)) {
        throw Error("rank " + std::to_string(m.config.rank) + " of " +
                    std::to_string(m.config.size) + ": waiting for " + what + ": rank " +
                    std::to_string(*taker) +
                    ", which took it, is gone (its heartbeat stopped: killed, crashed or stopped)");
      }
    } else if (now - start > m.config.timeout) {
      throw Error("rank " + std::to_string(m.config.rank) + " of " + std::to_string(m.config.size) +
                  ": waiting for " + what +
                  ": no rank says it took it (a rank died as it took it)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

std::unique_ptr<Group> join_group_from_environment() {
  const auto config = group_config();
  if (!config) return nullptr;
  return std::make_unique<Group>(*config);
}

}  // namespace corelocker
