import Config

# Evaluated at every boot of the release, never at build time: the deploy tooling configures
# the app through environment variables only.
#
# Invalid configuration ends the boot with exactly one `FATAL:` line on stderr and exit
# status 1. Raising here instead would print a multi-page boot report and write an
# erl_crash.dump, which is what an operator least wants to read during a deploy.
fatal = fn message ->
  IO.puts(:stderr, "FATAL: " <> message)
  System.halt(1)
end

# Integers must be written in plain decimal: "4000", not "4000 " or "4e3".
integer_env = fn name, default, min, max ->
  case System.get_env(name) do
    nil ->
      default

    raw ->
      case Integer.parse(raw) do
        {value, ""} when value >= min and value <= max ->
          value

        _ ->
          fatal.("#{name} must be an integer between #{min} and #{max}, got #{inspect(raw)}")
      end
  end
end

boolean_env = fn name ->
  raw = System.get_env(name, "")

  case String.downcase(String.trim(raw)) do
    value when value in ["1", "true", "yes", "on"] ->
      true

    value when value in ["", "0", "false", "no", "off"] ->
      false

    _ ->
      fatal.("#{name} must be one of 1/true/yes/on or 0/false/no/off, got #{inspect(raw)}")
  end
end

max_ms = 24 * 60 * 60 * 1000

# A secret comes as a systemd credential (a file in $CREDENTIALS_DIRECTORY, named like the
# variable: beamops_secrets_delivery credentials) or, failing that, as an environment variable.
secret_env = fn name ->
  with dir when is_binary(dir) <- System.get_env("CREDENTIALS_DIRECTORY"),
       {:ok, value} <- File.read(Path.join(dir, name)) do
    value
  else
    _ -> System.get_env(name)
  end
end

secret_key_base =
  case secret_env.("SECRET_KEY_BASE") do
    value when value in [nil, ""] ->
      fatal.("SECRET_KEY_BASE is missing or empty; expected a non-empty secret string")

    value ->
      value
  end

bind_address =
  case System.get_env("BIND_ADDRESS", "127.0.0.1")
       |> String.to_charlist()
       |> :inet.parse_address() do
    {:ok, address} ->
      address

    {:error, _} ->
      fatal.(
        "BIND_ADDRESS must be an IPv4 or IPv6 address literal, got " <>
          inspect(System.get_env("BIND_ADDRESS"))
      )
  end

cluster_nodes =
  System.get_env("CLUSTER_NODES", "")
  |> String.split(",", trim: true)
  |> Enum.map(&String.trim/1)
  |> Enum.reject(&(&1 == ""))
  |> Enum.map(fn name ->
    if String.match?(name, ~r/^[^@\s]+@[^@\s]+$/) do
      String.to_atom(name)
    else
      fatal.(
        "CLUSTER_NODES must be comma-separated node names like app@host, got #{inspect(name)}"
      )
    end
  end)

slot =
  case System.get_env("SLOT", "") do
    "" -> "none"
    value -> value
  end

config :sample_app,
  secret_key_base: secret_key_base,
  bind_address: bind_address,
  port: integer_env.("PORT", 4000, 1, 65_535),
  slot: slot,
  ready_delay_ms: integer_env.("READY_DELAY_MS", 0, 0, max_ms),
  fail_health: boolean_env.("FAIL_HEALTH"),
  fail_after_ms: integer_env.("FAIL_AFTER_MS", nil, 0, max_ms),
  fail_kind:
    (case System.get_env("FAIL_KIND", "all") do
       kind when kind in ["all", "readiness", "http_500"] ->
         String.to_atom(kind)

       other ->
         fatal.("FAIL_KIND must be all, readiness or http_500, got #{inspect(other)}")
     end),
  cluster_nodes: cluster_nodes,
  # Readiness waits until this many peers are connected ("joining" until then).
  ready_min_nodes: integer_env.("READY_MIN_NODES", 0, 0, 10_000),
  shutdown_drain_ms: integer_env.("SHUTDOWN_DRAIN_MS", 0, 0, max_ms),
  idle_timeout_ms: integer_env.("HTTP_IDLE_TIMEOUT_MS", 15_000, 100, max_ms)
