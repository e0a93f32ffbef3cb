defmodule SampleApp.Cluster do
  @moduledoc """
  Connects to the nodes named in CLUSTER_NODES and keeps retrying every second, forever:
  peers come and go during blue-green switches, and a peer that boots later must still be
  joined without restarting this node.

  Readiness asks `status/1` whether at least READY_MIN_NODES peers are connected; when not,
  it says why each missing peer is missing: not running (its host's epmd does not know the
  name), running but refusing us (a different cookie or TLS settings: the handshake failed
  although epmd knows the name), or its host not answering.
  """
  use GenServer

  @retry_interval_ms 1_000
  @epmd_timeout_ms 1_000
  @table __MODULE__

  @type why :: :not_running | :refused | :host_unreachable

  @spec start_link([node()]) :: GenServer.on_start()
  def start_link(nodes), do: GenServer.start_link(__MODULE__, nodes, name: __MODULE__)

  @doc "Visible connected nodes, sorted, as strings (for the readiness JSON)."
  @spec connected_nodes() :: [String.t()]
  def connected_nodes, do: Node.list() |> Enum.map(&Atom.to_string/1) |> Enum.sort()

  @doc """
  Whether at least `min` peers are connected, and why the missing ones are missing:
  `{:ok | :short, %{required: min, connected: n, missing: %{"node" => "why"}}}`.
  """
  @spec status(non_neg_integer()) :: {:ok | :short, map()}
  def status(min) do
    connected = length(Node.list())

    missing =
      for {peer, why} <- :ets.tab2list(@table), peer not in Node.list(), into: %{} do
        {Atom.to_string(peer), explain(why)}
      end

    {if(connected >= min, do: :ok, else: :short),
     %{required: min, connected: connected, missing: missing}}
  end

  @doc """
  Leaves the cluster for good: refuses every peer from now on and drops the connections.
  Called last when the node stops, so that peers retrying to connect cannot pull it back.
  """
  @spec leave() :: :ok
  def leave do
    GenServer.call(__MODULE__, :leave)
  end

  @impl true
  def init(nodes) do
    :ets.new(@table, [:named_table, :public, read_concurrency: true])
    send(self(), :connect)
    {:ok, %{peers: nodes, leaving: false}}
  end

  @impl true
  def handle_info(:connect, %{leaving: true} = state), do: {:noreply, state}

  def handle_info(:connect, %{peers: peers} = state) do
    # Node.connect/1 returns :ignored when distribution is off (RELEASE_DISTRIBUTION=none),
    # so the loop is harmless there. The next attempt is scheduled after this one finishes:
    # an unreachable host can block Node.connect/1 for several seconds.
    for peer <- peers -- [node() | Node.list()] do
      if Node.connect(peer) == true,
        do: :ets.delete(@table, peer),
        else: :ets.insert(@table, {peer, why_not(peer)})
    end

    if peers != [], do: Process.send_after(self(), :connect, @retry_interval_ms)
    {:noreply, state}
  end

  @impl true
  def handle_call(:leave, _from, state) do
    if node() != :nonode@nohost do
      # Only this node itself may connect from now on: peers that retry are refused.
      :net_kernel.allow([node()])
      Enum.each(Node.list([:visible, :hidden]), &Node.disconnect/1)
    end

    {:reply, :ok, %{state | leaving: true}}
  end

  # Asked only after a failed connect: is the peer registered with its host's epmd?
  @spec why_not(node()) :: why()
  defp why_not(peer) do
    [name, host] = peer |> Atom.to_string() |> String.split("@", parts: 2)

    case :erl_epmd.port_please(String.to_charlist(name), String.to_charlist(host), @epmd_timeout_ms) do
      {:port, _port, _version} -> :refused
      :noport -> :not_running
      _ -> :host_unreachable
    end
  end

  defp explain(:not_running), do: "not running (its host's epmd does not know it)"

  defp explain(:refused),
    do: "running, but the connection failed: a different cookie or TLS settings"

  defp explain(:host_unreachable), do: "its host's epmd does not answer"
end
