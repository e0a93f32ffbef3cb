defmodule SampleApp.Health do
  @moduledoc """
  Build identity and the readiness state the deploy tooling polls.

  Readiness is computed from the boot time on every request rather than flipped by
  timers, so there is no process that can fall behind or crash. Static values live in
  `:persistent_term` (read on every request, written once); the draining flag is an
  atomic because it changes at runtime.
  """

  @key {__MODULE__, :state}

  @type status :: :starting | :joining | :ready | :failing | :draining

  @spec init(keyword()) :: :ok
  def init(config) do
    :persistent_term.put(@key, %{
      version: config |> Keyword.fetch!(:version) |> to_string(),
      slot: Keyword.fetch!(config, :slot),
      booted_at_ms: now_ms(),
      ready_delay_ms: Keyword.fetch!(config, :ready_delay_ms),
      fail_health: Keyword.fetch!(config, :fail_health),
      fail_after_ms: Keyword.fetch!(config, :fail_after_ms),
      fail_kind: Keyword.get(config, :fail_kind, :all),
      ready_min_nodes: Keyword.get(config, :ready_min_nodes, 0),
      draining: :atomics.new(1, [])
    })
  end

  @spec version() :: String.t()
  def version, do: state().version

  @spec slot() :: String.t()
  def slot, do: state().slot

  @spec node_name() :: String.t()
  def node_name, do: Atom.to_string(node())

  @spec uptime_seconds() :: float()
  def uptime_seconds, do: (now_ms() - state().booted_at_ms) / 1000

  @spec start_draining() :: :ok
  def start_draining, do: :atomics.put(state().draining, 1, 1)

  @spec draining?() :: boolean()
  def draining?, do: :atomics.get(state().draining, 1) == 1

  @doc """
  True once FAIL_AFTER_MS has elapsed since readiness: the release 'broke' after a switch.
  FAIL_KIND says what breaks: `all` (readiness and real requests), `readiness` (only the
  readiness answer), `http_500` (real requests answer 500 while readiness still says ready).
  """
  @spec broken?(:readiness | :requests) :: boolean()
  def broken?(what) do
    %{fail_after_ms: fail_after_ms, fail_kind: kind} = state = state()

    fail_after_ms != nil and now_ms() >= ready_at_ms(state) + fail_after_ms and
      kind in affected_by(what)
  end

  defp affected_by(:readiness), do: [:all, :readiness]
  defp affected_by(:requests), do: [:all, :http_500]

  @spec status() :: status()
  def status do
    state = state()

    cond do
      draining?() -> :draining
      state.fail_health -> :failing
      now_ms() < ready_at_ms(state) -> :starting
      broken?(:readiness) -> :failing
      state.ready_min_nodes > 0 and elem(cluster(), 0) == :short -> :joining
      true -> :ready
    end
  end

  @doc """
  The cluster part of readiness (READY_MIN_NODES): whether enough peers are connected and
  why the others are not. Always `:ok` when READY_MIN_NODES is 0.
  """
  @spec cluster() :: {:ok | :short, map()}
  def cluster, do: SampleApp.Cluster.status(state().ready_min_nodes)

  defp ready_at_ms(state), do: state.booted_at_ms + state.ready_delay_ms
  defp state, do: :persistent_term.get(@key)
  defp now_ms, do: System.monotonic_time(:millisecond)
end
