// Groups of processes: the Gloo group in one process (two ranks on two threads), and
// data-parallel `train` run as two processes on loopback, as torchrun would start them.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <exception>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "distributed/group.h"
#include "models/checkpoint.h"
#include "temp_dir.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker {
namespace {

// A port nothing listens on now (the kernel's pick for a socket bound to port 0).
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    close(fd);
    return 0;
  }
  close(fd);
  return ntohs(a.sin_port);
}

GroupConfig config_of(int rank, int size, int port, int timeout_s = 30) {
  GroupConfig c;
  c.rank = rank;
  c.size = size;
  c.master_addr = "127.0.0.1";
  c.master_port = port;
  c.interface = "lo";
  c.timeout = std::chrono::seconds(timeout_s);
  return c;
}

// Runs body(rank) for every rank of a group of `size` on its own thread; rethrows the first
// failure.
void on_ranks(int size, const std::function<void(int)>& body) {
  std::vector<std::exception_ptr> errors(size);
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      try {
        body(r);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

TEST(GroupConfig, ReadsTheLaunchersVariablesAndNamesABadOne) {
  std::map<std::string, std::string> env;
  auto get = [&env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  EXPECT_FALSE(group_config(get).has_value());  // nothing set: one process
  env["WORLD_SIZE"] = "1";
  EXPECT_FALSE(group_config(get).has_value());
  env = {{"WORLD_SIZE", "4"},
         {"RANK", "3"},
         {"LOCAL_WORLD_SIZE", "2"},
         {"MASTER_ADDR", "node7"},
         {"MASTER_PORT", "29400"},
         {"TORCHELASTIC_USE_AGENT_STORE", "True"},
         {"TORCHELASTIC_RESTART_COUNT", "2"}};
  auto c = group_config(get);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->rank, 3);
  EXPECT_EQ(c->size, 4);
  EXPECT_EQ(c->local_size, 2);
  EXPECT_EQ(c->master_addr, "node7");
  EXPECT_EQ(c->master_port, 29400);
  EXPECT_TRUE(c->agent_store);
  EXPECT_EQ(c->attempt, "2");
  EXPECT_EQ(c->timeout, std::chrono::seconds(120));
  // Slurm's own variables do not start a group (a batch script has them too).
  env = {{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "5"}};
  EXPECT_FALSE(group_config(get).has_value());
  env = {{"WORLD_SIZE", "2"},
         {"RANK", "1"},
         {"MASTER_ADDR", "a"},
         {"MASTER_PORT", "5"},
         {"CORELOCKER_DIST_TIMEOUT", "7"}};
  c = group_config(get);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->rank, 1);
  EXPECT_EQ(c->size, 2);
  EXPECT_EQ(c->local_size, 1);
  EXPECT_FALSE(c->agent_store);
  EXPECT_EQ(c->timeout, std::chrono::seconds(7));

  auto refused = [&](const std::map<std::string, std::string>& e, const std::string& message) {
    env = e;
    try {
      group_config(get);
      ADD_FAILURE() << "accepted; expected: " << message;
    } catch (const UsageError& err) {
      EXPECT_NE(std::string(err.what()).find(message), std::string::npos) << err.what();
    }
  };
  const std::map<std::string, std::string> good = {
      {"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1234"}};
  auto with = [&](const std::string& k, const std::string& v) {
    auto e = good;
    if (v.empty()) {
      e.erase(k);
    } else {
      e[k] = v;
    }
    return e;
  };
  refused(with("RANK", ""), "RANK is not set");
  refused(with("RANK", "2"), "RANK=2: must be below WORLD_SIZE=2");
  refused(with("RANK", "x"), "RANK='x'");
  refused(with("WORLD_SIZE", "-3"), "WORLD_SIZE='-3'");
  refused(with("MASTER_ADDR", ""), "MASTER_ADDR is not set");
  refused(with("MASTER_PORT", "70000"), "MASTER_PORT=70000: not a port");
  refused(with("CORELOCKER_DIST_TIMEOUT", "0"), "CORELOCKER_DIST_TIMEOUT='0'");
}

TEST(Group, SumsAgreesAndCounts) {
  const int port = free_port();
  ASSERT_GT(port, 0);
  std::vector<std::vector<int64_t>> drawn(2);
  on_ranks(2, [&](int r) {
    Group g(config_of(r, 2, port));
    EXPECT_EQ(g.rank(), r);
    EXPECT_EQ(g.size(), 2);
    // Two float tensors larger than a bucket together, a non-contiguous one, a double and an
    // integer tensor: several buckets, each summed.
    std::vector<torch::Tensor> t{
        torch::full({3 << 20}, float(r + 1)),                // 12 MiB
        torch::full({2 << 20}, float(10 * (r + 1))),         // 8 MiB: its own bucket
        torch::full({4, 6}, float(r)).t(),                   // non-contiguous
        torch::full({5}, double(r) + 0.5, torch::kFloat64),  // another dtype
        torch::arange(4, torch::kInt64) * (r + 1)};
    g.sum(t);
    EXPECT_TRUE(t[0].eq(3.0f).all().item<bool>());
    EXPECT_TRUE(t[1].eq(30.0f).all().item<bool>());
    EXPECT_TRUE(t[2].eq(1.0f).all().item<bool>());
    EXPECT_FALSE(t[2].is_contiguous());
    EXPECT_TRUE(t[3].eq(2.0).all().item<bool>());
    EXPECT_TRUE(t[4].equal(torch::arange(4, torch::kInt64) * 3));

    g.agree("the same thing", "same");
    try {
      g.agree("training options", r == 0 ? R"({"lr":0.1,"epochs":3})" : R"({"lr":0.2,"epochs":3})");
      ADD_FAILURE() << "rank " << r << ": different options agreed";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(
                    "different training options: lr: rank 1 has 0.2, rank 0 has 0.1"),
                std::string::npos)
          << e.what();
    }
    for (int i = 0; i < 3; ++i) drawn[r].push_back(g.fetch_add("queue", 1));
    g.barrier();
  });
  // Six draws from one counter, each number once.
  std::set<int64_t> all(drawn[0].begin(), drawn[0].end());
  all.insert(drawn[1].begin(), drawn[1].end());
  EXPECT_EQ(all, (std::set<int64_t>{0, 1, 2, 3, 4, 5}));
}

TEST(Group, AQueueSharesJobsOutAndCollectsEveryResult) {
  const int port = free_port();
  std::vector<std::vector<int64_t>> taken(2);
  std::vector<std::string> results;
  on_ranks(2, [&](int r) {
    Group g(config_of(r, 2, port));
    const auto first = g.open_queue("grid", 7);
    const auto second = g.open_queue("grid", 2);  // the same name again: a queue of its own
    EXPECT_NE(first.name, second.name);
    for (int64_t j; (j = g.next_job(first)) >= 0;) {
      taken[r].push_back(j);
      g.post_result(first, j, std::to_string(r) + ":" + std::to_string(j));
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the other rank take some
    }
    for (int64_t j; (j = g.next_job(second)) >= 0;) g.post_result(second, j, "second");
    if (r == 0) {
      for (int64_t j = 0; j < 7; ++j) results.push_back(g.result(first, j));
      EXPECT_EQ(g.result(second, 1), "second");
    }
    g.barrier();
  });
  // Each job taken once, by one rank or the other, and its result is that rank's.
  std::set<int64_t> all;
  for (int r = 0; r < 2; ++r) {
    EXPECT_FALSE(taken[r].empty()) << "rank " << r << " took no job";
    for (int64_t j : taken[r]) {
      EXPECT_TRUE(all.insert(j).second) << "job " << j << " taken twice";
      EXPECT_EQ(results.at(j), std::to_string(r) + ":" + std::to_string(j));
    }
  }
  EXPECT_EQ(all.size(), 7u);
}

TEST(Group, AJobWhoseRankIsGoneIsNamed) {
  const int port = free_port();
  on_ranks(2, [&](int r) {
    auto g = std::make_unique<Group>(config_of(r, 2, port));
    const auto queue = g->open_queue("grid", 2);
    if (r == 1) {
      ASSERT_GE(g->next_job(queue), 0);
      g->barrier();
      g.reset();  // gone without posting its job: its heartbeat stops
      return;
    }
    g->barrier();  // rank 1 has taken a job
    std::vector<int64_t> mine;
    for (int64_t j; (j = g->next_job(queue)) >= 0;) mine.push_back(j);
    ASSERT_EQ(mine.size(), 1u);
    const int64_t theirs = 1 - mine[0];
    const auto start = std::chrono::steady_clock::now();
    try {
      g->result(queue, theirs);
      ADD_FAILURE() << "a result came from a rank that never posted one";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("rank 1, which took it, is gone"), std::string::npos)
          << e.what();
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  });
}

TEST(Group, ARankThatNeverComesIsNamed) {
  const int port = free_port();
  const auto start = std::chrono::steady_clock::now();
  try {
    Group g(config_of(0, 2, port, /*timeout_s=*/2));
    FAIL() << "joined a group of 2 alone";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank(s) 1 did not join within 2 s"), std::string::npos)
        << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

// Gloo writes to a gone rank's socket with writev, which raises SIGPIPE: joining sets it to be
// ignored where it had its default action (a write then fails with EPIPE, which the collective
// reports naming the rank), and leaves a handler someone set alone.
extern "C" void count_sigpipe(int) {}

TEST(Group, JoiningIgnoresSigpipeUnlessAHandlerIsSet) {
  const auto disposition = [] {
    struct sigaction a {};
    sigaction(SIGPIPE, nullptr, &a);
    return a.sa_handler;
  };
  for (const auto before : {&count_sigpipe, SIG_DFL}) {
    std::signal(SIGPIPE, before);
    const int port = free_port();
    on_ranks(2, [&](int r) { Group g(config_of(r, 2, port)); });
    EXPECT_EQ(disposition(), before == SIG_DFL ? SIG_IGN : before);
  }
  // Where the default action would end the process, a write to a closed peer now fails.
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  close(fds[1]);
  const char byte = 1;
  EXPECT_EQ(write(fds[0], &byte, 1), -1);
  EXPECT_EQ(errno, EPIPE);
  close(fds[0]);
}

// ------------------------------------------------------------ train as two processes

struct Process {
  pid_t pid = -1;
  std::string log;
};

// Starts the CLI with `args`, `env` added to this process's environment, output to `log`.
Process start(const std::vector<std::string>& args, const std::map<std::string, std::string>& env,
              const std::string& log) {
  Process p;
  p.log = log;
  p.pid = fork();
  if (p.pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> argv{const_cast<char*>(args[0].c_str())};
    for (size_t i = 1; i < args.size(); ++i) argv.push_back(const_cast<char*>(args[i].c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return p;
}

std::string read_log(const Process& p) {
  std::ifstream f(p.log);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Exit code of `p`, or -1 (killed) when it has not ended by the deadline.
int finish(const Process& p, std::chrono::steady_clock::time_point deadline) {
  int status = 0;
  while (waitpid(p.pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(p.pid, SIGKILL);
      waitpid(p.pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::map<std::string, std::string> rank_env(int rank, int size, int port) {
  return {{"RANK", std::to_string(rank)},
          {"WORLD_SIZE", std::to_string(size)},
          {"LOCAL_WORLD_SIZE", std::to_string(size)},
          {"MASTER_ADDR", "127.0.0.1"},
          {"MASTER_PORT", std::to_string(port)},
          {"GLOO_SOCKET_IFNAME", "lo"},
          {"CORELOCKER_DIST_TIMEOUT", "60"}};
}

std::vector<std::string> cli(std::vector<std::string> args) {
  args.insert(args.begin(), CORELOCKER_BIN);
  return args;
}

// Runs `args` as a group of `size` ranks; rank r's arguments get extra[r] appended. Returns the
// exit codes (-1: past the deadline) and fills logs.
std::vector<int> run_group(int size, const std::vector<std::string>& args, const std::string& dir,
                           std::vector<std::string>& logs,
                           const std::vector<std::vector<std::string>>& extra = {},
                           int deadline_s = 300) {
  const int port = free_port();
  std::vector<Process> ranks;
  for (int r = 0; r < size; ++r) {
    auto a = cli(args);
    if (r < static_cast<int>(extra.size())) a.insert(a.end(), extra[r].begin(), extra[r].end());
    ranks.push_back(start(a, rank_env(r, size, port), dir + "/rank" + std::to_string(r) + ".log"));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(deadline_s);
  std::vector<int> codes;
  logs.clear();
  for (auto& p : ranks) {
    codes.push_back(finish(p, deadline));
    logs.push_back(read_log(p));
  }
  return codes;
}

// The bar of issue 20: the same global batch and seed on 1 and 2 ranks give the same model. An
// MLP without BatchNorm (whose batch statistics would differ per slice), with augmentation on.
TEST(DistributedTrain, TwoRanksTrainTheModelOneRankTrains) {
  testing::TempDir dir;
  const std::vector<std::string> args = {
      "train",   "--arch",    "fcn",      "--set",     "norm=0",       "--depth", "2",
      "--width", "64",        "--epochs", "2",         "--batch-size", "50",      "--train-subset",
      "250",     "--threads", "1",        "--no-eval", "--out"};
  std::vector<std::string> logs;
  auto one = args;
  one.push_back(dir.file("one.ckpt"));
  const int code = finish(start(cli(one), {}, dir.file("one.log")),
                          std::chrono::steady_clock::now() + std::chrono::seconds(300));
  ASSERT_EQ(code, 0) << read_log(Process{0, dir.file("one.log")});
  auto two = args;
  two.push_back(dir.file("two.ckpt"));
  const auto codes = run_group(2, two, dir.path(), logs);
  ASSERT_EQ(codes, (std::vector<int>{0, 0})) << logs[0] << "\n--- rank 1:\n" << logs[1];
  EXPECT_NE(logs[0].find("wrote " + dir.file("two.ckpt")), std::string::npos) << logs[0];
  EXPECT_EQ(logs[1], "");  // rank 1 trains quietly

  LoadedModel a = load_model(dir.file("one.ckpt")), b = load_model(dir.file("two.ckpt"));
  const auto ta = named_tensors(*a.net), tb = named_tensors(*b.net);
  ASSERT_EQ(ta.size(), tb.size());
  int changed = 0;
  torch::manual_seed(0);  // as `train` seeds before it builds the model (--seed 0)
  LoadedModel init = create_model(a.meta);
  const auto t0 = named_tensors(*init.net);
  for (size_t i = 0; i < ta.size(); ++i) {
    EXPECT_EQ(ta[i].name, tb[i].name);
    const double diff = (ta[i].tensor - tb[i].tensor).abs().max().item<double>();
    EXPECT_LT(diff, 1e-5) << ta[i].name;
    changed += !ta[i].tensor.equal(t0[i].tensor);
  }
  EXPECT_GT(changed, 0);  // training moved the weights: the comparison above means something
  // The summaries agree too: the loss is the whole batch's on every rank.
  const auto sa = nlohmann::json::parse(a.meta.training_json),
             sb = nlohmann::json::parse(b.meta.training_json);
  EXPECT_NEAR(sa["final_train_loss"].get<double>(), sb["final_train_loss"].get<double>(), 1e-4);
  EXPECT_NEAR(sa["final_train_accuracy"].get<double>(), sb["final_train_accuracy"].get<double>(),
              0.5);  // an image or two may fall the other way
}

TEST(DistributedTrain, RanksGivenDifferentOptionsAreRefused) {
  testing::TempDir dir;
  std::vector<std::string> logs;
  const auto codes = run_group(2,
                               {"train", "--arch", "tinycnn", "--epochs", "1", "--train-subset",
                                "64", "--threads", "1", "--no-eval", "--out", dir.file("m.ckpt")},
                               dir.path(), logs, {{"--lr", "0.1"}, {"--lr", "0.2"}}, 120);
  EXPECT_EQ(codes, (std::vector<int>{2, 2})) << logs[0] << logs[1];
  for (const auto& log : logs) {
    EXPECT_NE(log.find("different training options: lr: rank 1 has 0.2, rank 0 has 0.1"),
              std::string::npos)
        << log;
  }
  EXPECT_FALSE(file_exists(dir.file("m.ckpt")));
}

// A rank killed mid-run: the other stops with an error naming it, the last checkpoint is
// intact, and `--resume` on two ranks finishes the run.
TEST(DistributedTrain, AKilledRankStopsTheOtherAndResumeFinishes) {
  testing::TempDir dir;
  const std::string ckpt = dir.file("r.ckpt");
  const int port = free_port();
  const auto args = cli({"train", "--arch", "tinycnn", "--epochs", "25", "--train-subset", "256",
                         "--batch-size", "64", "--threads", "1", "--no-eval", "--out", ckpt});
  Process r0 = start(args, rank_env(0, 2, port), dir.file("rank0.log"));
  Process r1 = start(args, rank_env(1, 2, port), dir.file("rank1.log"));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!file_exists(ckpt) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (!file_exists(ckpt)) {
    kill(r0.pid, SIGKILL);
    kill(r1.pid, SIGKILL);
    finish(r0, deadline);
    finish(r1, deadline);
    FAIL() << "no checkpoint within 120 s: " << read_log(r0);
  }
  kill(r1.pid, SIGKILL);
  const auto killed = std::chrono::steady_clock::now();
  EXPECT_EQ(finish(r1, killed + std::chrono::seconds(10)), 128 + SIGKILL);
  // Stated in docs/distributed.md: a killed rank is noticed at the next gradient sum (its
  // connections close), named after three heartbeats (1.5 s).
  const int code = finish(r0, killed + std::chrono::seconds(30));
  const std::string log = read_log(r0);
  ASSERT_EQ(code, 1) << log;
  EXPECT_NE(log.find("rank 1 is gone"), std::string::npos) << log;
  EXPECT_LT(std::chrono::steady_clock::now() - killed, std::chrono::seconds(30));

  LoadedModel m = load_model(ckpt);  // intact
  const auto record = nlohmann::json::parse(m.meta.training_json);
  const int done = record.value("epochs_done", 0);
  EXPECT_GE(done, 1);
  EXPECT_LT(done, 25);
  EXPECT_TRUE(file_exists(ckpt + ".optim"));

  std::vector<std::string> logs;
  const auto codes = run_group(
      2, {"train", "--resume", "--threads", "1", "--no-eval", "--out", ckpt}, dir.path(), logs);
  ASSERT_EQ(codes, (std::vector<int>{0, 0})) << logs[0] << logs[1];
  EXPECT_NE(logs[0].find("resuming " + ckpt + " at epoch " + std::to_string(done + 1)),
            std::string::npos)
      << logs[0];
  const auto finished = nlohmann::json::parse(load_model(ckpt).meta.training_json);
  EXPECT_FALSE(finished.contains("epochs_done"));
  EXPECT_EQ(finished["epochs"], 25);
  EXPECT_FALSE(file_exists(ckpt + ".optim"));
}

// Runs one process to its end (at most 300 s): its exit code and its log.
std::pair<int, std::string> run_one(const std::vector<std::string>& args, const std::string& log) {
  const Process p = start(cli(args), {}, log);
  const int code = finish(p, std::chrono::steady_clock::now() + std::chrono::seconds(300));
  return std::make_pair(code, read_log(p));  // the log once the process has ended
}

// The model the grid tests lock and sweep: tinycnn, one epoch on 512 images, at dir/m.ckpt.
std::pair<int, std::string> train_tiny(const testing::TempDir& dir) {
  return run_one({"train", "--arch", "tinycnn", "--epochs", "1", "--train-subset", "512",
                  "--threads", "1", "--no-eval", "--out", dir.file("m.ckpt")},
                 dir.file("train.log"));
}

// A JSON report without its "seconds" fields, which differ from run to run.
nlohmann::json json_without_times(const std::string& path) {
  std::ifstream f(path);
  auto j = nlohmann::json::parse(f);
  std::function<void(nlohmann::json&)> drop_times = [&](nlohmann::json& v) {
    if (v.is_object()) {
      v.erase("seconds");
      for (auto& [k, x] : v.items()) drop_times(x);
    } else if (v.is_array()) {
      for (auto& x : v) drop_times(x);
    }
  };
  drop_times(j);
  return j;
}

// `attack all` as two ranks: the trials are shared out and rank 0's report holds the numbers of
// one process with the same seeds and threads.
TEST(DistributedAttack, TwoRanksReportWhatOneRankReports) {
  testing::TempDir dir;
  std::vector<std::string> logs;
  auto run1 = [&](const std::vector<std::string>& args, const std::string& log) {
    return run_one(args, dir.file(log));
  };
  auto r = train_tiny(dir);
  ASSERT_EQ(r.first, 0) << r.second;
  r = run1({"lock", "--model", dir.file("m.ckpt"), "--ratio", "0.05", "--out",
            dir.file("locked.ckpt"), "--key-out", dir.file("k.clk")},
           "lock.log");
  ASSERT_EQ(r.first, 0) << r.second;
  const std::vector<std::string> attack = {
      "attack",          "all",   "--model",       dir.file("locked.ckpt"),
      "--data-fraction", "0.005", "--trials",      "2",
      "--epochs",        "1",     "--test-subset", "500",
      "--threads",       "1",     "--report"};
  auto one = attack;
  one.push_back(dir.file("one.json"));
  r = run1(one, "one.log");
  ASSERT_EQ(r.first, 0) << r.second;
  auto two = attack;
  two.push_back(dir.file("two.json"));
  const auto codes = run_group(2, two, dir.path(), logs);
  ASSERT_EQ(codes, (std::vector<int>{0, 0})) << logs[0] << "\n--- rank 1:\n" << logs[1];
  EXPECT_EQ(logs[1], "");

  // The same report but for the times.
  const nlohmann::json a = json_without_times(dir.file("one.json")),
                       b = json_without_times(dir.file("two.json"));
  EXPECT_EQ(a, b) << a.dump(1) << "\n---\n" << b.dump(1);
  // It is a grid worth comparing: several attacks, two trials each, some of them trained.
  ASSERT_TRUE(a.contains("attacks")) << a.dump(1);
  int trained_rows = 0;
  for (const auto& row : a["attacks"]) trained_rows += row["trials"].size() == 2;
  EXPECT_GE(trained_rows, 4) << a.dump(1);
}

// The bar of issue 20 for the curves: `sweep`, `bands` and `calibrate` on two ranks write the
// numbers one process writes (the same threads per process), rank 1 prints nothing, an
// interrupted sweep resumes on two ranks, and ranks given different options are refused before
// any work.
TEST(DistributedControl, TwoRanksSweepAndTabulateWhatOneRankDoes) {
  testing::TempDir dir;
  std::vector<std::string> logs;
  auto run1 = [&](const std::vector<std::string>& args, const std::string& log) {
    return run_one(args, dir.file(log));
  };
  auto r = train_tiny(dir);
  ASSERT_EQ(r.first, 0) << r.second;
  const auto read_json = json_without_times;
  auto with = [&](const std::string& words, const std::string& last) {
    std::vector<std::string> a;
    std::istringstream in(words);
    for (std::string w; in >> w;) a.push_back(w);
    a.insert(a.begin() + 1, {"--model", dir.file("m.ckpt")});
    a.push_back(last);
    return a;
  };
  // 700 test images are two batches of 500 and 200: the ranks' slices differ in size.
  const std::string sweep =
      "sweep --ratios 0.02,0.1 --criteria l1,bn,random --seeds 2 --test-subset 700 "
      "--reestimate-images 128 --threads 1 --no-plot --out-dir";
  r = run1(with(sweep, dir.file("one")), "one.log");
  ASSERT_EQ(r.first, 0) << r.second;
  auto codes = run_group(2, with(sweep, dir.file("two")), dir.path(), logs);
  ASSERT_EQ(codes, (std::vector<int>{0, 0})) << logs[0] << "\n--- rank 1:\n" << logs[1];
  EXPECT_EQ(logs[1], "");
  const auto a = read_json(dir.file("one/sweep.json")), b = read_json(dir.file("two/sweep.json"));
  EXPECT_EQ(a["points"], b["points"]) << a.dump(1) << "\n---\n" << b.dump(1);
  EXPECT_EQ(a["unlocked"], b["unlocked"]);
  ASSERT_EQ(a["points"].size(), 6u) << a.dump(1);
  EXPECT_FALSE(a["points"][0]["top1_effective"].is_null()) << a.dump(1);
  {
    // Cut to its first two points, as a kill leaves it, the two-rank sweep resumes on two ranks.
    std::ifstream f(dir.file("two/sweep.json"));
    auto cut = nlohmann::json::parse(f);
    cut["points"].erase(cut["points"].begin() + 2, cut["points"].end());
    cut["complete"] = false;
    write_file_atomic(dir.file("two/sweep.json"), cut.dump(2));
  }
  auto resumed = with(sweep, dir.file("two"));
  resumed.push_back("--resume");
  codes = run_group(2, resumed, dir.path(), logs);
  ASSERT_EQ(codes, (std::vector<int>{0, 0})) << logs[0] << "\n--- rank 1:\n" << logs[1];
  EXPECT_NE(logs[0].find("resuming: 2 points"), std::string::npos) << logs[0];
  EXPECT_EQ(a["points"], read_json(dir.file("two/sweep.json"))["points"]);

  const std::string bands =
      "bands --width 20 --val-size 600 --max-evals 12 --test-subset 700 --reestimate-images 128 "
      "--threads 1 --json";
  r = run1(with(bands, dir.file("one.json")), "bands.log");
  ASSERT_LE(r.first, 1) << r.second;  // 1: the budget ran out, the table is still written
  codes = run_group(2, with(bands, dir.file("two.json")), dir.path(), logs);
  ASSERT_EQ(codes, (std::vector<int>{r.first, r.first})) << logs[0] << "\n--- rank 1:\n" << logs[1];
  const auto ta = read_json(dir.file("one.json")), tb = read_json(dir.file("two.json"));
  EXPECT_EQ(ta["rows"], tb["rows"]) << ta.dump(1) << "\n---\n" << tb.dump(1);
  EXPECT_EQ(ta["probes"], tb["probes"]);
  EXPECT_GE(ta["probes"].size(), 4u) << ta.dump(1);

  // calibrate: the same probes, and rank 0 writes the locked model one process writes.
  const std::string calibrate =
      "calibrate --target 10-25 --val-size 600 --test-subset 700 --reestimate-images 128 "
      "--threads 1 --key-out";
  auto cal1 = with(calibrate, dir.file("k1.clk"));
  cal1.insert(cal1.end(), {"--out", dir.file("l1.ckpt")});
  r = run1(cal1, "calibrate.log");
  ASSERT_EQ(r.first, 0) << r.second;
  auto cal2 = with(calibrate, dir.file("k2.clk"));
  cal2.insert(cal2.end(), {"--out", dir.file("l2.ckpt")});
  codes = run_group(2, cal2, dir.path(), logs);
  ASSERT_EQ(codes, (std::vector<int>{0, 0})) << logs[0] << "\n--- rank 1:\n" << logs[1];
  auto probes = [](const std::string& log) {
    const size_t from = log.find("eval  1:"), to = log.find("chosen ratio");
    if (from == std::string::npos || to == std::string::npos || to < from) {
      ADD_FAILURE() << "no probes in:\n" << log;
      return std::string();
    }
    return log.substr(from, to - from);
  };
  EXPECT_EQ(probes(r.second), probes(logs[0]));
  EXPECT_EQ(run1({"fingerprint", dir.file("l1.ckpt")}, "f1.log").second,
            run1({"fingerprint", dir.file("l2.ckpt")}, "f2.log").second);

  codes = run_group(2, with(sweep, dir.file("three")), dir.path(), logs,
                    {{"--first-seed", "0"}, {"--first-seed", "1"}}, 120);
  EXPECT_EQ(codes, (std::vector<int>{2, 2})) << logs[0] << logs[1];
  EXPECT_NE(logs[0].find("different options of `sweep`: --first-seed: rank 1 has"),
            std::string::npos)
      << logs[0];
  EXPECT_FALSE(file_exists(dir.file("three/sweep.csv")));
}

// Commands that do not share their work launched as a group would run whole on every rank:
// refused.
TEST(DistributedTrain, OtherCommandsRefuseToRunAsAGroup) {
  testing::TempDir dir;
  const Process p = start(cli({"models"}), rank_env(1, 2, free_port()), dir.file("models.log"));
  EXPECT_EQ(finish(p, std::chrono::steady_clock::now() + std::chrono::seconds(60)), 2);
  EXPECT_NE(read_log(p).find("`models` runs in one process, but was launched as rank 1 of a "
                             "group of 2"),
            std::string::npos)
      << read_log(p);
}

// torchrun's own launch: its agent serves the store, every rank is a client.
TEST(DistributedTrain, TorchrunLaunchesIt) {
  if (access("/usr/bin/torchrun", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/torchrun";
  testing::TempDir dir;
  const std::string ckpt = dir.file("t.ckpt");
  // Debian 12's torchrun (torch 1.13 on Python 3.11) cannot parse --redirects 0, its default.
  const Process p = start({"/usr/bin/torchrun",
                           "--no_python",
                           "--nproc_per_node",
                           "2",
                           "--master_port",
                           std::to_string(free_port()),
                           "--redirects",
                           "1",
                           "--tee",
                           "1",
                           CORELOCKER_BIN,
                           "train",
                           "--arch",
                           "tinycnn",
                           "--epochs",
                           "1",
                           "--train-subset",
                           "128",
                           "--no-eval",
                           "--out",
                           ckpt},
                          {{"GLOO_SOCKET_IFNAME", "lo"}}, dir.file("torchrun.log"));
  const int code = finish(p, std::chrono::steady_clock::now() + std::chrono::seconds(180));
  const std::string log = read_log(p);
  ASSERT_EQ(code, 0) << log;
  EXPECT_NE(log.find("wrote " + ckpt), std::string::npos) << log;
  EXPECT_EQ(nlohmann::json::parse(load_model(ckpt).meta.training_json)["epochs"], 1);
}

}  // namespace
}  // namespace corelocker
