# The "R limit": single-row predict() calls in a plain R loop, the yardstick for rfleet.
#
# Usage:
#   Rscript benches/r_limit.R --model DIR/rf500/model.rds --rows DIR/rows.jsonl \
#     [--requests 2000] [--warmup 200] [--processes 1] [--duration-s 300] [--json out.json]
#
# It loads the same model.rds, reads the same request rows (JSON lines as rfleet-load
# sends them, or a CSV with a header), turns them into one-row data.frames with the
# model's factor levels (outside the timed region, as rfleet does in Rust before R sees
# them), and then times `predict(model, newdata = row)` once per row. It prints the same
# summary line as rfleet-load and writes the same JSON fields.
#
# One R process uses one core. With --processes k the loop runs in k forked processes at
# once (parallel::mcparallel), each doing its share of the calls: the best a single-row
# caller could get from k cores with no HTTP, no queue and no batching. Latencies are
# per call; throughput is all successful calls over the wall time from the first loop's
# start to the last loop's end. Percentiles are nearest rank (quantile type 1), as in
# rfleet-load.

suppressPackageStartupMessages({
  library(jsonlite)
  library(parallel)
})

parse_args <- function(argv) {
  defaults <- list(model = NULL, rows = NULL, requests = "2000", warmup = "200",
                   processes = "1", `duration-s` = "300", json = NULL)
  if (length(argv) %% 2 != 0) stop("arguments come in pairs: --name value", call. = FALSE)
  opts <- defaults
  for (i in seq(1, length(argv), by = 2)) {
    name <- sub("^--", "", argv[[i]])
    if (!startsWith(argv[[i]], "--") || !(name %in% names(defaults))) {
      stop(sprintf("unknown argument %s", argv[[i]]), call. = FALSE)
    }
    opts[[name]] <- argv[[i + 1]]
  }
  if (is.null(opts$model) || is.null(opts$rows)) {
    stop("usage: Rscript r_limit.R --model model.rds --rows rows.jsonl|rows.csv [--requests N] ",
         "[--warmup N] [--processes K] [--duration-s S] [--json out.json]", call. = FALSE)
  }
  opts
}

opts <- parse_args(commandArgs(trailingOnly = TRUE))
n_requests <- as.integer(opts$requests)
n_warmup <- as.integer(opts$warmup)
n_processes <- as.integer(opts$processes)
duration_s <- as.numeric(opts$`duration-s`)
stopifnot(n_requests >= 1, n_warmup >= 0, n_processes >= 1, duration_s > 0)

model <- readRDS(opts$model)
# readRDS does not attach the package that defines the predict method: attach the one
# named like the model's class when there is one (randomForest, ranger, rpart, gbm, ...).
for (pkg in intersect(class(model), rownames(installed.packages()))) {
  suppressPackageStartupMessages(library(pkg, character.only = TRUE))
}

# Rows, as data.frames of one row each.
read_rows <- function(path) {
  if (grepl("\\.csv$", path, ignore.case = TRUE)) {
    all <- read.csv(path, stringsAsFactors = FALSE)
  } else {
    lines <- readLines(path)
    lines <- lines[nzchar(trimws(lines))]
    all <- do.call(rbind, lapply(lines, function(line) fromJSON(line)))
  }
  # Factor predictors get the training levels, as the service does from the model's
  # xlevels; otherwise predict() rejects a character column as the wrong type.
  xlevels <- if (!is.null(model$forest$xlevels)) model$forest$xlevels else model$xlevels
  for (name in names(xlevels)) {
    if (is.character(xlevels[[name]]) && name %in% names(all)) {
      all[[name]] <- factor(all[[name]], levels = xlevels[[name]])
    }
  }
  lapply(seq_len(nrow(all)), function(i) all[i, , drop = FALSE])
}
rows <- read_rows(opts$rows)
if (length(rows) == 0) stop(sprintf("%s has no rows", opts$rows), call. = FALSE)

now <- function() as.double(Sys.time())

# This process's minor page faults so far (field 10 of /proc/self/stat; NA where there is
# none): memory the allocator took fresh from the kernel, see BENCHMARKS.md.
minor_faults <- function() {
  stat <- tryCatch(readLines("/proc/self/stat", warn = FALSE), error = function(e) "")
  # The command name (field 2) is in parentheses and may hold spaces: count after it.
  fields <- strsplit(sub("^.*\\) ", "", stat), " ", fixed = TRUE)[[1]]
  if (length(fields) < 8) NA_real_ else as.numeric(fields[[8]])
}

# Times `n` calls starting at row `first` (0-based, cycling); stops early at `stop_at`.
timed_loop <- function(n, first, stop_at) {
  latencies_s <- numeric(n)
  ok <- logical(n)
  first_error <- NULL
  done <- 0L
  faults_before <- minor_faults()
  started <- now()
  for (i in seq_len(n)) {
    if (now() >= stop_at) break
    row <- rows[[((first + i - 1L) %% length(rows)) + 1L]]
    t0 <- now()
    ok[i] <- tryCatch({
      predict(model, newdata = row)
      TRUE
    }, error = function(e) {
      if (is.null(first_error)) first_error <<- conditionMessage(e)
      FALSE
    })
    latencies_s[i] <- now() - t0
    done <- i
  }
  list(started = started, ended = now(), faults = minor_faults() - faults_before,
       latencies_s = latencies_s[seq_len(done)][ok[seq_len(done)]],
       n_done = done, n_errors = sum(!ok[seq_len(done)]), first_error = first_error)
}

# Warm-up in this process, before forking: byte-compiles predict's code path and touches
# the model, so every forked loop starts warm.
if (n_warmup > 0) {
  warm <- timed_loop(n_warmup, 0L, now() + duration_s)
  cat(sprintf("r_limit: warm-up: %d calls, %d errors, %.3f s\n",
              warm$n_done, warm$n_errors, warm$ended - warm$started), file = stderr())
}
first_prediction <- predict(model, newdata = rows[[1]])

shares <- diff(round(seq(0, n_requests, length.out = n_processes + 1)))
firsts <- n_warmup + c(0, cumsum(shares))[seq_len(n_processes)]
stop_at <- now() + duration_s
if (n_processes == 1) {
  loops <- list(timed_loop(shares[[1]], firsts[[1]], stop_at))
} else {
  jobs <- lapply(seq_len(n_processes), function(k) {
    mcparallel(timed_loop(shares[[k]], firsts[[k]], stop_at), name = paste0("loop", k))
  })
  loops <- mccollect(jobs)
  failed <- vapply(loops, function(l) inherits(l, "try-error") || is.null(l$n_done), logical(1))
  if (any(failed)) stop("a forked loop failed: ", paste(loops[failed], collapse = "; "), call. = FALSE)
}

latencies_ms <- sort(unlist(lapply(loops, `[[`, "latencies_s"))) * 1000
n_done <- sum(vapply(loops, `[[`, integer(1), "n_done"))
n_errors <- sum(vapply(loops, `[[`, integer(1), "n_errors"))
seconds <- max(vapply(loops, `[[`, numeric(1), "ended")) - min(vapply(loops, `[[`, numeric(1), "started"))
first_error <- Filter(Negate(is.null), lapply(loops, `[[`, "first_error"))
faults_per_call <- sum(vapply(loops, `[[`, numeric(1), "faults")) / max(n_done, 1)
if (length(first_error) > 0) cat("r_limit: first error: ", first_error[[1]], "\n", file = stderr())

proc_status_kib <- function(field) {
  lines <- tryCatch(readLines("/proc/self/status"), error = function(e) character(0))
  line <- grep(paste0("^", field, ":"), lines, value = TRUE)
  if (length(line) == 0) return(NA_real_)
  as.numeric(sub("^[^:]*:[[:space:]]*([0-9]+).*$", "\\1", line[[1]]))
}

pct <- function(p) {
  if (length(latencies_ms) == 0) return(NA_real_)
  round(unname(quantile(latencies_ms, p, type = 1)), 3)
}
summary <- list(
  system = "R predict loop",
  concurrency = n_processes,
  processes = n_processes,
  requests = n_done,
  errors = n_errors,
  seconds = round(seconds, 3),
  rps = round(if (seconds > 0) length(latencies_ms) / seconds else 0, 3),
  p50_ms = pct(0.50),
  p90_ms = pct(0.90),
  p99_ms = pct(0.99),
  max_ms = pct(1),
  r_version = paste(R.version$major, R.version$minor, sep = "."),
  # This (parent) R process's resident memory now and at its peak, in KiB, from /proc
  # (NA where there is none): the model, the rows and R itself, for the memory table.
  rss_kib = proc_status_kib("VmRSS"),
  hwm_kib = proc_status_kib("VmHWM"),
  # Minor page faults per measured call, over every loop.
  minor_faults_per_call = round(faults_per_call, 1),
  first_prediction = unname(as.vector(first_prediction))[1]
)

fmt <- function(v) if (is.na(v)) "-" else sprintf("%.2f", v)
cat(sprintf(paste0("r_limit: processes=%d requests=%d errors=%d seconds=%.3f rps=%.1f ",
                   "p50_ms=%s p90_ms=%s p99_ms=%s max_ms=%s minor_faults_per_call=%s first_prediction=%s\n"),
            n_processes, n_done, n_errors, seconds, summary$rps,
            fmt(summary$p50_ms), fmt(summary$p90_ms), fmt(summary$p99_ms), fmt(summary$max_ms),
            fmt(summary$minor_faults_per_call),
            format(summary$first_prediction, digits = 15)))
if (!is.null(opts$json)) {
  writeLines(toJSON(summary, auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null"), opts$json)
}
if (n_errors > 0) quit(status = 1)
