import Config

# One compact line per event on stdout; systemd's journal adds its own timestamps, but the
# tests and `bin/sample_app start` in a terminal read stdout directly.
config :logger, :console, format: "$date $time [$level] $message\n"
config :logger, level: :info, utc_log: true
