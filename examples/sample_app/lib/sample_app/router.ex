defmodule SampleApp.Router do
  @moduledoc "Maps a request to a response. Pure apart from reading the health state."

  alias SampleApp.{Cluster, Health, JSON, Metrics}

  @type response :: %{
          status: pos_integer(),
          headers: [{String.t(), String.t()}],
          body: iodata(),
          metric_path: String.t()
        }

  @json "application/json"
  @text "text/plain; charset=utf-8"
  @known_paths ["/", "/health/live", "/health/ready", "/version", "/metrics", "/forwarded"]

  @doc "As route/2; /forwarded also sees the request's headers (lower-case names)."
  @spec route(String.t(), String.t(), [{String.t(), String.t()}]) :: response()
  def route(method, "/forwarded", headers) when method in ["GET", "HEAD"] do
    # What the proxy in front told the release about the client: proves it sets the
    # forwarded headers from the peer rather than passing on what a client claimed.
    values = fn name -> for {^name, value} <- headers, do: value end

    json(200, "/forwarded", %{
      x_forwarded_for: values.("x-forwarded-for"),
      x_forwarded_proto: values.("x-forwarded-proto")
    })
  end

  def route(method, path, _headers), do: route(method, path)

  @spec route(String.t(), String.t()) :: response()
  def route(method, path) when method in ["GET", "HEAD"], do: get(path)

  def route(_method, path) when path in @known_paths do
    response(405, @text, "method not allowed\n", path, [{"allow", "GET, HEAD"}])
  end

  def route(_method, path), do: get(path)

  defp get("/") do
    if Health.broken?(:requests) do
      response(500, @text, "sample_app #{Health.version()} on #{Health.slot()}: failing\n", "/")
    else
      response(200, @text, "sample_app #{Health.version()} on #{Health.slot()}\n", "/")
    end
  end

  defp get("/health/live") do
    json(200, "/health/live", %{status: "alive", version: Health.version(), slot: Health.slot()})
  end

  defp get("/health/ready") do
    status = Health.status()

    body = %{
      status: Atom.to_string(status),
      version: Health.version(),
      slot: Health.slot(),
      node: Health.node_name(),
      connected_nodes: Cluster.connected_nodes(),
      cluster: elem(Health.cluster(), 1)
    }

    json(if(status == :ready, do: 200, else: 503), "/health/ready", body)
  end

  defp get("/version") do
    json(200, "/version", %{
      version: Health.version(),
      slot: Health.slot(),
      node: Health.node_name()
    })
  end

  defp get("/metrics"), do: response(200, Metrics.content_type(), Metrics.render(), "/metrics")

  # Unknown paths share one metric label so that scanners cannot grow the series count.
  defp get(_path), do: response(404, @text, "not found\n", "unmatched")

  defp json(status, metric_path, body) do
    response(status, @json, [JSON.encode(body), ?\n], metric_path)
  end

  defp response(status, content_type, body, metric_path, extra_headers \\ []) do
    %{
      status: status,
      headers: [{"content-type", content_type}, {"cache-control", "no-store"} | extra_headers],
      body: body,
      metric_path: metric_path
    }
  end
end
