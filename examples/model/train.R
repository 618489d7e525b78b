# Trains the model that plumber.R serves: fuel economy (mpg) from weight (wt, in 1000 lb),
# horsepower (hp) and transmission (am: 0 automatic, 1 manual), by ordinary least squares on the
# mtcars data that ships with R. Base R only.
#
#   Rscript examples/model/train.R            # writes examples/model/model.rds
#   Rscript examples/model/train.R out.rds    # or anywhere else
#   Rscript examples/model/train.R examples/model/model-v2.rds "mpg ~ wt * am + hp"
#                                             # version 2 of valve.toml: the same inputs, with
#                                             # weight's effect differing by transmission
#
# The model is saved with saveRDS() and read back once per worker with readRDS(): training stays
# out of the request path, and every worker serves exactly the same coefficients.

args <- commandArgs(trailingOnly = TRUE)
script_dir <- local({
  file_arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  if (length(file_arg) == 1) dirname(normalizePath(sub("^--file=", "", file_arg))) else "."
})
out <- if (length(args) >= 1) args[[1]] else file.path(script_dir, "model.rds")
formula <- as.formula(if (length(args) >= 2) args[[2]] else "mpg ~ wt + hp + am")
if (!all(all.vars(formula)[-1] %in% c("wt", "hp", "am"))) {
  stop("plumber.R takes wt, hp and am: the model may use only those")
}

model <- lm(formula, data = mtcars)
saveRDS(model, out)
cat(sprintf("wrote %s: %s, R^2 %.3f on %d cars\n", out, deparse(formula(model)),
            summary(model)$r.squared, nrow(mtcars)))
