# A model served as an HTTP API: predict fuel economy (mpg) of cars from their weight, horsepower
# and transmission, with the linear model train.R fitted on mtcars.
#
#   valvectl -f examples/model/plumber.R -n 4
#   curl -H 'Content-Type: application/json' -d '{"wt": 2.62, "hp": 110, "am": 1}' \
#     http://127.0.0.1:3000/predict
#
# Each worker reads model.rds once, when it starts; a request only runs predict(). Input is checked
# before it reaches the model, so a wrong type or a missing field gets 400 and a message saying
# what to fix, never R's generic 500.

library(plumber)

# plumber evaluates this file from its own directory, so model.rds is found beside it. MODEL_FILE
# names another (valve.toml serves model-v2.rds beside model.rds this way).
model_file <- Sys.getenv("MODEL_FILE", "model.rds")
if (!file.exists(model_file)) {
  stop(model_file, " not found next to plumber.R: run `Rscript train.R` first")
}
model <- readRDS(model_file)
features <- c("wt", "hp", "am")
max_cars <- 1000

# Plumber parses a JSON body itself and answers malformed JSON with a bare 500. This parser hands
# the body over as text, so that /predict can answer 400 with a message instead.
register_parser("json_text", function(...) function(value, ...) rawToChar(value),
                fixed = c("application/json", "text/plain", "application/x-www-form-urlencoded"),
                verbose = FALSE)

# Checks one car (a list parsed from a JSON object); returns NULL if it is fine, else the problem.
car_problem <- function(car, where) {
  if (!is.list(car) || is.null(names(car))) {
    return(sprintf("%s must be an object like {\"wt\": 2.62, \"hp\": 110, \"am\": 1}", where))
  }
  missing <- setdiff(features, names(car))
  if (length(missing) > 0) {
    return(sprintf("%s is missing %s", where, paste(missing, collapse = ", ")))
  }
  for (name in features) {
    value <- car[[name]]
    if (!is.numeric(value) || length(value) != 1 || !is.finite(value)) {
      got <- if (is.null(value)) "null" else if (is.character(value)) "a string"
             else if (is.logical(value)) "true/false" else if (is.list(value)) "a list"
             else "not a number"
      return(sprintf("%s: %s must be a number, got %s", where, name, got))
    }
  }
  if (!car$am %in% c(0, 1)) return(sprintf("%s: am must be 0 (automatic) or 1 (manual)", where))
  if (car$wt <= 0 || car$hp <= 0) return(sprintf("%s: wt and hp must be more than 0", where))
  NULL
}

#* Predict miles per gallon for one car or several.
#* Body: {"wt": 2.62, "hp": 110, "am": 1}, or an array of such objects.
#* wt is the weight in 1000 lb, hp the gross horsepower, am 0 (automatic) or 1 (manual).
#* Answers {"mpg": [...]}, one prediction per car, in order.
#* The body is read by its own parser (json_text, above), so valve leaves it to this function,
#* which answers 400 and what to fix for {"wt": "heavy"}; /refit's query is checked by valve.
#* @param wt:numeric weight in 1000 lb
#* @param hp:numeric gross horsepower
#* @param am:numeric 0 (automatic) or 1 (manual)
#* @parser json_text
#* @serializer unboxedJSON
#* @post /predict
function(req, res) {
  fail <- function(message) {
    res$status <- 400
    list(error = message, status = 400)
  }
  body <- req$postBody
  if (is.null(body) || !nzchar(body)) {
    return(fail("send a JSON body: {\"wt\": 2.62, \"hp\": 110, \"am\": 1}"))
  }
  parsed <- tryCatch(jsonlite::fromJSON(body, simplifyVector = FALSE),
                     error = function(e) structure(sub("\n.*", "", conditionMessage(e)), class = "bad_json"))
  if (inherits(parsed, "bad_json")) return(fail(paste("the body is not valid JSON:", parsed)))

  # One object is one car; an array (no names) is several.
  cars <- if (is.list(parsed) && !is.null(names(parsed))) list(parsed) else parsed
  if (!is.list(cars) || length(cars) == 0) {
    return(fail("send a car object or a non-empty array of them"))
  }
  if (length(cars) > max_cars) return(fail(sprintf("at most %d cars per request", max_cars)))
  for (i in seq_along(cars)) {
    where <- if (length(cars) == 1 && !is.null(names(parsed))) "the car" else sprintf("car %d", i)
    problem <- car_problem(cars[[i]], where)
    if (!is.null(problem)) return(fail(problem))
  }

  newdata <- data.frame(wt = vapply(cars, function(car) car$wt, numeric(1)),
                        hp = vapply(cars, function(car) car$hp, numeric(1)),
                        am = vapply(cars, function(car) car$am, numeric(1)))
  list(mpg = I(round(unname(predict(model, newdata)), 3)))
}

#* Health check for valve's --health-path: the model is loaded and predicts.
#* @serializer unboxedJSON
#* @get /health
function() {
  list(status = "ok", model = deparse(formula(model)))
}

#* Refit the served model's formula on bootstrap resamples of mtcars: slow on purpose (about a
#* second of CPU per 1500 resamples), the kind of request to send as a job, so that no client
#* connection waits on it:
#*   curl -i -X POST -H 'Prefer: respond-async' 'http://127.0.0.1:3000/refit?resamples=5000'
#*     # 202, Location: /_valve/jobs/ID
#*   curl -i http://127.0.0.1:3000/_valve/jobs/ID   # 202 and its state until done, then this answer
#* Answers the coefficients fitted on all of mtcars, their bootstrap standard errors, and how many
#* resamples; the same for the same seed on any worker. It writes nothing: model.rds stays as
#* train.R wrote it (retrain with train.R, then reload valve, to serve a new model).
#* @param resamples:int bootstrap resamples, 1 to 20000
#* @param seed:int the random seed of the resampling
#* @serializer unboxedJSON
#* @post /refit
function(res, resamples = "5000", seed = "1") {
  n <- suppressWarnings(as.integer(resamples))
  s <- suppressWarnings(as.integer(seed))
  if (is.na(n) || n < 1 || n > 20000 || is.na(s)) {
    res$status <- 400
    return(list(error = "resamples must be a whole number from 1 to 20000, seed a whole number",
                status = 400))
  }
  f <- formula(model)
  set.seed(s)
  boot <- replicate(n, coef(lm(f, data = mtcars[sample.int(nrow(mtcars), replace = TRUE), ])))
  full <- coef(lm(f, data = mtcars))
  list(formula = deparse(f), resamples = n, seed = s,
       coefficients = as.list(round(full, 6)),
       std_errors = as.list(round(apply(boot, 1, sd), 6)))
}

# valve's micro-batching (examples/model/batch.toml): valve gathers concurrent /predict requests and
# sends their bodies here as one JSON array; this answers an array with, for each body, what
# /predict answers for it alone, from one predict() on all their cars. If any body is not one
# /predict would answer with 200, the batch answers 400, and valve sends each request alone to
# /predict (batch-retry-singly), where it gets its own answer. (bindings/r's valve_batch_route()
# makes such a route from a one-request function.)
#* Predict for a batch of /predict bodies (valve sends these): a JSON array of them.
#* @parser json_text
#* @serializer unboxedJSON
#* @post /predict_batch
function(req, res) {
  fail <- function(message) {
    res$status <- 400
    list(error = message, status = 400)
  }
  bodies <- tryCatch(jsonlite::fromJSON(req$postBody, simplifyVector = FALSE),
                     error = function(e) NULL)
  if (!is.list(bodies) || !is.null(names(bodies)) || length(bodies) == 0) {
    return(fail("send a non-empty JSON array of /predict bodies"))
  }
  # Each body as /predict takes it: one car object, or an array of cars.
  per_body <- lapply(bodies, function(b) if (is.list(b) && !is.null(names(b))) list(b) else b)
  for (i in seq_along(per_body)) {
    cars <- per_body[[i]]
    if (!is.list(cars) || length(cars) == 0 || length(cars) > max_cars) {
      return(fail(sprintf("body %d: not what /predict takes", i)))
    }
    for (car in cars) {
      if (!is.null(car_problem(car, "a car"))) return(fail(sprintf("body %d: a car is invalid", i)))
    }
  }
  cars <- do.call(c, per_body)
  newdata <- data.frame(wt = vapply(cars, function(car) car$wt, numeric(1)),
                        hp = vapply(cars, function(car) car$hp, numeric(1)),
                        am = vapply(cars, function(car) car$am, numeric(1)))
  mpg <- round(unname(predict(model, newdata)), 3)
  owner <- rep(seq_along(per_body), lengths(per_body))
  lapply(seq_along(per_body), function(i) list(mpg = I(mpg[owner == i])))
}
