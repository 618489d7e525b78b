// batcher.hpp: which requests may join a batch, the batch route's body, how its answer is split
// back, and a route's batch keys in the config file (the proxying itself is driven by
// tests/integration/test_batching.py).
#include <doctest/doctest.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "batcher.hpp"
#include "config_file.hpp"
#include "http.hpp"
#include "support.hpp"

namespace {

valve::Head post(std::string target, std::string content_type = "application/json") {
  valve::Head h;
  h.method = "POST";
  h.target = std::move(target);
  if (!content_type.empty()) h.headers.push_back({"Content-Type", content_type});
  return h;
}

}  // namespace

TEST_CASE("batcher: a POST of one JSON value to exactly the route's path is batchable") {
  using valve::batchable_request;
  CHECK(batchable_request(post("/predict"), "/predict", R"({"wt": 2.6})"));
  CHECK(batchable_request(post("/predict?x=1"), "/predict", "[1,2]"));
  CHECK(batchable_request(post("/predict", "Application/JSON; charset=utf-8"), "/predict", "3"));
  CHECK(batchable_request(post("/"), "/", "{}"));
  // Another path under the route, another method, another type, or no type.
  CHECK_FALSE(batchable_request(post("/predict/x"), "/predict", "{}"));
  CHECK_FALSE(batchable_request(post("/predictx"), "/predict", "{}"));
  CHECK_FALSE(batchable_request(post("/predict", "text/plain"), "/predict", "{}"));
  CHECK_FALSE(batchable_request(post("/predict", "application/json-seq"), "/predict", "{}"));
  CHECK_FALSE(batchable_request(post("/predict", ""), "/predict", "{}"));
  valve::Head put = post("/predict");
  put.method = "PUT";
  CHECK_FALSE(batchable_request(put, "/predict", "{}"));
  // A body that is not exactly one JSON value could change the array's shape: it goes alone.
  CHECK_FALSE(batchable_request(post("/predict"), "/predict", ""));
  CHECK_FALSE(batchable_request(post("/predict"), "/predict", "{"));
  CHECK_FALSE(batchable_request(post("/predict"), "/predict", "1,2"));
  CHECK_FALSE(batchable_request(post("/predict"), "/predict", "{}]"));
  CHECK_FALSE(batchable_request(post("/predict"), "/predict", "{} {}"));
  CHECK_FALSE(batchable_request(post("/predict"), "/predict", "{}],[{}"));
}

TEST_CASE("batcher: the batch body is the members' bodies as one array") {
  CHECK(valve::batch_body({}) == "[]");
  CHECK(valve::batch_body({R"({"a":1})"}) == R"([{"a":1}])");
  CHECK(valve::batch_body({R"({"a":1})", " 2 ", "[3]"}) == R"([{"a":1}, 2 ,[3]])");
}

TEST_CASE("batcher: a 2xx JSON array of one element per member is split back") {
  using valve::split_batch_answer;
  auto parts = split_batch_answer(200, R"([{"fit": 21.5, "b": [1, "x"]}, 3, null, "é"])", 4);
  REQUIRE(parts);
  CHECK(*parts == std::vector<std::string>{R"({"fit":21.5,"b":[1,"x"]})", "3", "null", "\"é\""});
  // Object members keep their order; numbers keep their value.
  parts = split_batch_answer(201, R"([{"z":1,"a":2},0.1,1e300,-7])", 4);
  REQUIRE(parts);
  CHECK(*parts == std::vector<std::string>{R"({"z":1,"a":2})", "0.1", "1e+300", "-7"});
  // Not 2xx, not JSON, not an array, or the wrong length: malformed.
  CHECK_FALSE(split_batch_answer(500, "[1,2]", 2));
  CHECK_FALSE(split_batch_answer(302, "[1,2]", 2));
  CHECK_FALSE(split_batch_answer(200, "[1,2", 2));
  CHECK_FALSE(split_batch_answer(200, R"({"0":1,"1":2})", 2));
  CHECK_FALSE(split_batch_answer(200, "[1,2,3]", 2));
  CHECK_FALSE(split_batch_answer(200, "[1]", 2));
  CHECK_FALSE(split_batch_answer(200, "", 1));
}

TEST_CASE("batcher: a route's batch-path, batch-max and batch-retry-singly from the config file") {
  test::TempFile file(R"([apps.model]
file = "plumber.R"
prefix = "/"

[[routes]]
prefix = "/predict"
app = "model"
batch-path = "/predict_batch"
batch-max = 16
batch-retry-singly = false

[[routes]]
prefix = "/other"
app = "model"
)");
  valve::Config options;
  REQUIRE_FALSE(options.set("config", file.path).has_value());
  std::vector<valve::Mistake> mistakes;
  auto layout = valve::load_layout(options, &mistakes);
  REQUIRE(layout);
  std::map<std::string, valve::BatchSpec> by_prefix;
  for (const valve::Route &r : layout->routes) by_prefix[r.prefix] = r.batch;
  CHECK(by_prefix["/predict"].path == "/predict_batch");
  CHECK(by_prefix["/predict"].max == 16);
  CHECK_FALSE(by_prefix["/predict"].retry_singly);
  CHECK_FALSE(by_prefix["/other"].enabled());
  CHECK(by_prefix["/other"].max == 32);
  CHECK(by_prefix["/other"].retry_singly);
  CHECK_FALSE(by_prefix["/"].enabled());

  // Mistakes name the key and what it takes.
  for (auto [line, expected] : std::vector<std::pair<std::string, std::string>>{
           {"batch-path = \"predict_batch\"", "routes[1].batch-path \"predict_batch\": expected"},
           {"batch-max = 0", "routes[1].batch-max: expected a whole number from 1 to 10000, got 0"},
           {"batch-max = \"8\"", "routes[1].batch-max: expected a whole number from 1 to 10000"},
           {"batch-retry-singly = 1", "routes[1].batch-retry-singly: expected true or false"},
           {"batch-mx = 8", "did you mean batch-max?"}}) {
    test::TempFile bad(
        "[apps.model]\nfile = \"plumber.R\"\n\n[[routes]]\nprefix = \"/p\"\n"
        "app = \"model\"\n" +
        line + "\n");
    valve::Config o;
    REQUIRE_FALSE(o.set("config", bad.path).has_value());
    std::vector<valve::Mistake> found;
    CHECK_FALSE(valve::load_layout(o, &found));
    REQUIRE(found.size() >= 1);
    CHECK_MESSAGE(found[0].message.find(expected) != std::string::npos, found[0].message);
  }
}
