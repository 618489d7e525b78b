// batcher.hpp: which requests may join a batch, the batch route's body, and how its answer is
// split back (the proxying itself is driven by tests/integration/test_batching.py).
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "batcher.hpp"
#include "http.hpp"

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
