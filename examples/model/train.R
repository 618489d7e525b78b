# Trains the model that plumber.R serves: fuel economy (mpg) from weight (wt, in 1000 lb),
# horsepower (hp) and transmission (am: 0 automatic, 1 manual), by ordinary least squares on the
# mtcars data that ships with R. Base R only.
#
#   Rscript examples/model/train.R            # writes examples/model/model.rds
#   Rscript examples/model/train.R out.rds    # or anywhere else
#
# The model is saved with saveRDS() and read back once per worker with readRDS(): training stays
# out of the request path, and every worker serves exactly the same coefficients.

args <- commandArgs(trailingOnly = TRUE)
script_dir <- local({
  file_arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  if (length(file_arg) == 1) dirname(normalizePath(sub("^--file=", "", file_arg))) else "."
})
out <- if (length(args) >= 1) args[[1]] else file.path(script_dir, "model.rds")

model <- lm(mpg ~ wt + hp + am, data = mtcars)
saveRDS(model, out)
cat(sprintf("wrote %s: mpg ~ wt + hp + am, R^2 %.3f on %d cars\n", out,
            summary(model)$r.squared, nrow(mtcars)))
