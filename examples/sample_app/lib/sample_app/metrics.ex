defmodule SampleApp.Metrics do
  @moduledoc "Request counters and the Prometheus text exposition (format 0.0.4)."
  use GenServer

  alias SampleApp.Health

  @table __MODULE__
  @content_type "text/plain; version=0.0.4; charset=utf-8"

  @spec start_link(term()) :: GenServer.on_start()
  def start_link(_), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @spec content_type() :: String.t()
  def content_type, do: @content_type

  @doc "Counts one response. `path` must come from a bounded set to bound label cardinality."
  @spec count_request(String.t(), pos_integer()) :: :ok
  def count_request(path, status) do
    key = {path, status}
    :ets.update_counter(@table, key, {2, 1}, {key, 0})
    :ok
  end

  @spec render() :: iodata()
  def render do
    ready = if Health.status() == :ready, do: 1, else: 0
    build_labels = [version: Health.version(), slot: Health.slot()]

    [
      family("sample_app_build_info", "gauge", "Build information; the value is always 1.", [
        {build_labels, 1}
      ]),
      family("sample_app_ready", "gauge", "1 when /health/ready answers 200, else 0.", [
        {[], ready}
      ]),
      family(
        "sample_app_http_requests_total",
        "counter",
        "HTTP responses by path and status.",
        request_samples()
      ),
      family(
        "sample_app_cluster_connected_nodes",
        "gauge",
        "Erlang nodes this node is connected to (its cluster peers).",
        [{[], length(Node.list())}]
      ),
      family("sample_app_uptime_seconds", "gauge", "Seconds since the application started.", [
        {[], Health.uptime_seconds()}
      ]),
      # What the VM runs as: the JIT or the interpreter (a sandbox forbidding writable
      # executable memory must not silently cost the JIT), and the limits it was given.
      family("sample_app_beam_info", "gauge", "The VM's build; the value is always 1.", [
        {[otp_release: to_string(:erlang.system_info(:otp_release)),
          emu_flavor: Atom.to_string(:erlang.system_info(:emu_flavor))], 1}
      ]),
      family(
        "sample_app_beam_limit",
        "gauge",
        "The VM's limits, from :erlang.system_info/1.",
        for(kind <- [:process_limit, :port_limit, :schedulers_online, :atom_limit],
            do: {[kind: Atom.to_string(kind)], :erlang.system_info(kind)})
      ),
      family(
        "sample_app_beam_memory_bytes",
        "gauge",
        "BEAM memory by kind, from :erlang.memory/0.",
        for({kind, bytes} <- :erlang.memory(), do: {[kind: Atom.to_string(kind)], bytes})
      )
    ]
  end

  @impl true
  def init(nil) do
    # Owned by this process so the table survives the request processes that update it.
    :ets.new(@table, [:named_table, :public, :set, write_concurrency: true])
    {:ok, nil}
  end

  defp request_samples do
    @table
    |> :ets.tab2list()
    |> Enum.sort()
    |> Enum.map(fn {{path, status}, count} ->
      {[path: path, status: Integer.to_string(status)], count}
    end)
  end

  defp family(name, type, help, samples) do
    [
      "# HELP ",
      name,
      " ",
      help,
      "\n# TYPE ",
      name,
      " ",
      type,
      "\n",
      Enum.map(samples, fn {labels, value} -> [name, labels(labels), " ", number(value), "\n"] end)
    ]
  end

  defp labels([]), do: []

  defp labels(labels) do
    pairs =
      Enum.map(labels, fn {key, value} -> [Atom.to_string(key), "=\"", escape(value), "\""] end)

    [?{, Enum.intersperse(pairs, ?,), ?}]
  end

  # Label values escape exactly backslash, double quote and line feed (exposition format).
  defp escape(value) do
    value
    |> String.replace("\\", "\\\\")
    |> String.replace("\"", "\\\"")
    |> String.replace("\n", "\\n")
  end

  defp number(value) when is_integer(value), do: Integer.to_string(value)
  defp number(value) when is_float(value), do: :erlang.float_to_binary(value, decimals: 3)
end
