defmodule SampleApp.HTTP.Listener do
  @moduledoc """
  Owns the listening socket and a pool of acceptor processes.

  Acceptors block in `:gen_tcp.accept/1` and hand each connection to its own process, so a
  slow client never delays accepting the next one. Closing the socket (on shutdown) makes
  every acceptor return `{:error, :closed}` and exit normally.
  """
  use GenServer
  require Logger

  alias SampleApp.HTTP.Connection

  @acceptors 10
  @accept_error_backoff_ms 100

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc "Stops accepting new connections; established connections are left alone."
  @spec stop_accepting() :: :ok
  def stop_accepting, do: GenServer.call(__MODULE__, :stop_accepting)

  @impl true
  def init(opts) do
    # Trap exits to replace crashed acceptors and to close the socket in terminate/2.
    Process.flag(:trap_exit, true)
    address = Keyword.fetch!(opts, :bind_address)
    port = Keyword.fetch!(opts, :port)

    case :gen_tcp.listen(port, listen_options(address)) do
      {:ok, socket} ->
        acceptors = for _ <- 1..@acceptors, do: start_acceptor(socket)
        {:ok, %{socket: socket, acceptors: MapSet.new(acceptors)}}

      {:error, reason} ->
        # A busy port is a deploy mistake, not a bug: one clear line beats a boot crash
        # report and an erl_crash.dump.
        IO.puts(
          :stderr,
          "FATAL: cannot listen on BIND_ADDRESS=#{:inet.ntoa(address)} PORT=#{port}: " <>
            List.to_string(:inet.format_error(reason))
        )

        System.halt(1)
    end
  end

  @impl true
  def handle_call(:stop_accepting, _from, state) do
    if state.socket, do: :gen_tcp.close(state.socket)
    {:reply, :ok, %{state | socket: nil}}
  end

  @impl true
  def handle_info({:EXIT, pid, reason}, state) do
    acceptors = MapSet.delete(state.acceptors, pid)

    if state.socket != nil and reason != :normal do
      Logger.error("HTTP acceptor exited with #{inspect(reason)}; starting a new one")
      {:noreply, %{state | acceptors: MapSet.put(acceptors, start_acceptor(state.socket))}}
    else
      {:noreply, %{state | acceptors: acceptors}}
    end
  end

  @impl true
  def terminate(_reason, state) do
    if state.socket, do: :gen_tcp.close(state.socket)
  end

  defp listen_options(address) do
    family = if tuple_size(address) == 8, do: [:inet6], else: [:inet]

    family ++
      [
        :binary,
        ip: address,
        active: false,
        packet: :raw,
        reuseaddr: true,
        backlog: 1024,
        nodelay: true,
        send_timeout: 30_000,
        send_timeout_close: true
      ]
  end

  defp start_acceptor(socket), do: spawn_link(fn -> accept_loop(socket) end)

  defp accept_loop(socket) do
    case :gen_tcp.accept(socket) do
      {:ok, client} ->
        Connection.serve(client)
        accept_loop(socket)

      {:error, :closed} ->
        :ok

      {:error, reason} ->
        # e.g. :emfile: back off instead of spinning, the condition is usually transient.
        Logger.warning("HTTP accept failed: #{inspect(reason)}")
        Process.sleep(@accept_error_backoff_ms)
        accept_loop(socket)
    end
  end
end
