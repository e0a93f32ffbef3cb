defmodule SampleApp.Application do
  @moduledoc """
  Starts the HTTP server and handles graceful shutdown.

  Shutdown (SIGTERM -> `init:stop/0`, OTP's default): `prep_stop/1` flips readiness to
  "draining" for SHUTDOWN_DRAIN_MS while every endpoint keeps serving, so a load balancer
  polling /health/ready stops sending traffic; then the listener closes, in-flight requests
  finish and the VM exits with status 0.
  """
  use Application
  require Logger

  alias SampleApp.{Health, HTTP}

  # Upper bound for in-flight requests to finish after the listener closed.
  @in_flight_timeout_ms 5_000

  @impl true
  def start(_type, _args) do
    config = Application.get_all_env(:sample_app)
    Health.init([{:version, Application.spec(:sample_app, :vsn)} | config])

    children = [
      SampleApp.Metrics,
      {SampleApp.Cluster, Keyword.fetch!(config, :cluster_nodes)},
      {Task.Supervisor, name: HTTP.Connections},
      {HTTP.Listener, Keyword.take(config, [:bind_address, :port])}
    ]

    with {:ok, pid} <-
           Supervisor.start_link(children, strategy: :one_for_one, name: SampleApp.Supervisor) do
      Logger.info(
        "sample_app started version=#{Health.version()} slot=#{Health.slot()} " <>
          "address=#{:inet.ntoa(config[:bind_address])} port=#{config[:port]} node=#{node()}"
      )

      {:ok, pid}
    end
  end

  @impl true
  def prep_stop(state) do
    drain_ms = Application.fetch_env!(:sample_app, :shutdown_drain_ms)
    Health.start_draining()
    Logger.info("sample_app draining for #{drain_ms} ms: readiness is 503, connections close")
    # Logger is asynchronous and stops right after this app: without a flush the line is
    # lost whenever SHUTDOWN_DRAIN_MS is short.
    Logger.flush()
    Process.sleep(drain_ms)
    HTTP.Listener.stop_accepting()
    HTTP.Connection.close_idle_and_wait(@in_flight_timeout_ms)
    # Last: leave the cluster so that peers see it go now, not when the VM exits, and
    # cannot pull it back while it stops.
    SampleApp.Cluster.leave()
    Logger.info("sample_app left the cluster")
    Logger.flush()
    state
  end
end
