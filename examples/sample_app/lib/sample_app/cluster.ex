defmodule SampleApp.Cluster do
  @moduledoc """
  Connects to the nodes named in CLUSTER_NODES and keeps retrying every second, forever:
  peers come and go during blue-green switches, and a peer that boots later must still be
  joined without restarting this node.
  """
  use GenServer

  @retry_interval_ms 1_000

  @spec start_link([node()]) :: GenServer.on_start()
  def start_link(nodes), do: GenServer.start_link(__MODULE__, nodes, name: __MODULE__)

  @doc "Visible connected nodes, sorted, as strings (for the readiness JSON)."
  @spec connected_nodes() :: [String.t()]
  def connected_nodes, do: Node.list() |> Enum.map(&Atom.to_string/1) |> Enum.sort()

  @impl true
  def init(nodes) do
    send(self(), :connect)
    {:ok, nodes}
  end

  @impl true
  def handle_info(:connect, nodes) do
    # Node.connect/1 returns :ignored when distribution is off (RELEASE_DISTRIBUTION=none),
    # so the loop is harmless there. The next attempt is scheduled after this one finishes:
    # an unreachable host can block Node.connect/1 for several seconds.
    for peer <- nodes -- [node() | Node.list()], do: Node.connect(peer)
    if nodes != [], do: Process.send_after(self(), :connect, @retry_interval_ms)
    {:noreply, nodes}
  end
end
