library(testthat)
library(valve)

test_check("valve")
