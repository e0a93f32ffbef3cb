defmodule SampleApp.HTTP.Connection do
  @moduledoc """
  One process per TCP connection, serving HTTP/1.0 and HTTP/1.1 with keep-alive.

  Requests are parsed from a byte buffer with `:erlang.decode_packet/3`, so a request split
  across many TCP reads and several requests pipelined in one read take the same path:
  parse what is complete, answer it, keep the rest.
  """
  alias SampleApp.{Health, Metrics, Router}

  @supervisor SampleApp.HTTP.Connections
  @max_head_bytes 16_384
  @max_body_bytes 1_048_576
  @handoff_timeout_ms 5_000

  @type request :: %{
          method: String.t(),
          target: term(),
          version: {non_neg_integer(), non_neg_integer()},
          headers: [{String.t(), String.t()}]
        }

  @doc "Called by an acceptor: moves the accepted socket into its own supervised process."
  @spec serve(:gen_tcp.socket()) :: :ok
  def serve(socket) do
    with {:ok, pid} <- Task.Supervisor.start_child(@supervisor, &await_socket/0),
         :ok <- :gen_tcp.controlling_process(socket, pid) do
      send(pid, {:socket, socket})
      :ok
    else
      _ ->
        :gen_tcp.close(socket)
        :ok
    end
  end

  @doc """
  Shutdown helper: asks every connection to close once it has no request in progress,
  then waits up to `timeout_ms` for all of them to exit. Busy connections finish their
  current request first (draining makes that response carry `Connection: close`).
  """
  @spec close_idle_and_wait(non_neg_integer()) :: :ok
  def close_idle_and_wait(timeout_ms) do
    monitors =
      for pid <- Task.Supervisor.children(@supervisor) do
        send(pid, :close_if_idle)
        Process.monitor(pid)
      end

    deadline = now_ms() + timeout_ms

    Enum.each(monitors, fn ref ->
      receive do
        {:DOWN, ^ref, :process, _, _} -> :ok
      after
        max(deadline - now_ms(), 0) -> Process.demonitor(ref, [:flush])
      end
    end)
  end

  @doc """
  Parses the first request in `buffer`.

  Returns `{:ok, request, rest}`, `:more` when the buffer holds only part of a request, or
  `{:error, status}` for a request that must be rejected (the connection is then closed).
  """
  @spec parse(binary()) :: {:ok, request(), binary()} | :more | {:error, pos_integer()}
  def parse(buffer) do
    case :erlang.decode_packet(:http_bin, buffer, []) do
      {:ok, {:http_request, method, target, version}, rest} ->
        request = %{method: method_string(method), target: target, version: version, headers: []}
        parse_headers(rest, request, byte_size(buffer))

      {:more, _} ->
        head_incomplete(byte_size(buffer))

      _ ->
        {:error, 400}
    end
  end

  defp parse_headers(buffer, request, head_size) do
    case :erlang.decode_packet(:httph_bin, buffer, []) do
      {:ok, {:http_header, _, name, _, value}, rest} ->
        header = {name |> header_name() |> String.downcase(), value}
        parse_headers(rest, %{request | headers: [header | request.headers]}, head_size)

      {:ok, :http_eoh, rest} ->
        parse_body(rest, %{request | headers: Enum.reverse(request.headers)})

      {:more, _} ->
        head_incomplete(head_size)

      _ ->
        {:error, 400}
    end
  end

  defp head_incomplete(size) when size > @max_head_bytes, do: {:error, 431}
  defp head_incomplete(_size), do: :more

  # Bodies are read and discarded so the next pipelined request starts at the right byte.
  # Chunked request bodies are not needed by any client of this app.
  defp parse_body(rest, request) do
    cond do
      header_values(request, "transfer-encoding") != [] ->
        {:error, 501}

      true ->
        case content_length(request) do
          {:ok, length} when length > @max_body_bytes ->
            {:error, 413}

          {:ok, length} when byte_size(rest) >= length ->
            {:ok, request, binary_part_after(rest, length)}

          {:ok, _length} ->
            :more

          :error ->
            {:error, 400}
        end
    end
  end

  defp binary_part_after(binary, length),
    do: binary_part(binary, length, byte_size(binary) - length)

  defp content_length(request) do
    case Enum.uniq(header_values(request, "content-length")) do
      [] ->
        {:ok, 0}

      [value] ->
        case Integer.parse(value) do
          {length, ""} when length >= 0 -> {:ok, length}
          _ -> :error
        end

      _conflicting ->
        :error
    end
  end

  defp header_values(request, name), do: for({^name, value} <- request.headers, do: value)

  defp method_string(method) when is_atom(method), do: Atom.to_string(method)
  defp method_string(method), do: method

  defp header_name(name) when is_atom(name), do: Atom.to_string(name)
  defp header_name(name), do: name

  # --- connection loop -------------------------------------------------------------------

  defp await_socket do
    receive do
      {:socket, socket} ->
        idle_timeout_ms = Application.fetch_env!(:sample_app, :idle_timeout_ms)
        next_request(%{socket: socket, buffer: "", idle_timeout_ms: idle_timeout_ms})
    after
      @handoff_timeout_ms -> :ok
    end
  end

  # The whole next request must arrive within the idle timeout, which bounds both idle
  # keep-alive connections and clients that trickle a request byte by byte.
  defp next_request(conn), do: read_request(conn, now_ms() + conn.idle_timeout_ms)

  defp read_request(conn, deadline) do
    conn = %{conn | buffer: skip_empty_lines(conn.buffer)}

    case parse(conn.buffer) do
      {:ok, request, rest} ->
        if answer(conn.socket, request) == :keep_alive do
          next_request(%{conn | buffer: rest})
        else
          :gen_tcp.close(conn.socket)
        end

      :more ->
        receive_more(conn, deadline)

      {:error, status} ->
        reject(conn.socket, status)
    end
  end

  # RFC 9112 section 2.2: ignore empty lines before a request line (some clients send a
  # CRLF after a POST body). decode_packet/3 would report them as an error.
  defp skip_empty_lines(<<"\r\n", rest::binary>>), do: skip_empty_lines(rest)
  defp skip_empty_lines(<<"\n", rest::binary>>), do: skip_empty_lines(rest)
  defp skip_empty_lines(buffer), do: buffer

  defp receive_more(%{socket: socket} = conn, deadline) do
    # Fails when the peer has already reset the connection: nothing left to serve.
    case :inet.setopts(socket, active: :once) do
      :ok -> await_data(conn, deadline)
      {:error, _reason} -> :gen_tcp.close(socket)
    end
  end

  defp await_data(%{socket: socket} = conn, deadline) do
    idle? = conn.buffer == ""

    receive do
      {:tcp, ^socket, data} ->
        read_request(%{conn | buffer: conn.buffer <> data}, deadline)

      {:tcp_closed, ^socket} ->
        :ok

      {:tcp_error, ^socket, _reason} ->
        :gen_tcp.close(socket)

      :close_if_idle when idle? ->
        :gen_tcp.close(socket)
    after
      max(deadline - now_ms(), 0) ->
        if idle?, do: :gen_tcp.close(socket), else: reject(socket, 408)
    end
  end

  defp answer(socket, %{version: version} = request) do
    {status, response} =
      case request_path(request) do
        {:ok, path} when version in [{1, 0}, {1, 1}] ->
          response = Router.route(request.method, path, request.headers)
          {response.status, response}

        {:ok, _path} ->
          {505, nil}

        :error ->
          {400, nil}
      end

    if response == nil do
      reject(socket, status)
      :close
    else
      keep_alive? = keep_alive?(request)
      head_only? = request.method == "HEAD"

      result =
        :gen_tcp.send(
          socket,
          encode(status, response.headers, response.body, keep_alive?, head_only?)
        )

      Metrics.count_request(response.metric_path, status)
      if result == :ok and keep_alive?, do: :keep_alive, else: :close
    end
  end

  defp request_path(%{target: {:abs_path, target}}), do: {:ok, strip_query(target)}
  defp request_path(%{target: {:absoluteURI, _, _, _, target}}), do: {:ok, strip_query(target)}
  defp request_path(%{target: :*}), do: {:ok, "*"}
  defp request_path(_request), do: :error

  defp strip_query(target), do: target |> String.split(["?", "#"], parts: 2) |> hd()

  # HTTP/1.1 keeps the connection by default, HTTP/1.0 only when asked. While draining every
  # response closes, so clients with pooled connections reconnect to the other slot.
  defp keep_alive?(request) do
    tokens =
      request
      |> header_values("connection")
      |> Enum.flat_map(&String.split(&1, ","))
      |> Enum.map(&(&1 |> String.trim() |> String.downcase()))

    cond do
      Health.draining?() -> false
      "close" in tokens -> false
      request.version == {1, 1} -> true
      true -> "keep-alive" in tokens
    end
  end

  defp reject(socket, status) do
    body = "#{reason_phrase(status)}\n"
    headers = [{"content-type", "text/plain; charset=utf-8"}]
    _ = :gen_tcp.send(socket, encode(status, headers, body, false, false))
    Metrics.count_request("invalid", status)
    :gen_tcp.close(socket)
  end

  defp encode(status, headers, body, keep_alive?, head_only?) do
    [
      "HTTP/1.1 ",
      Integer.to_string(status),
      " ",
      reason_phrase(status),
      "\r\n",
      Enum.map(headers, fn {name, value} -> [name, ": ", value, "\r\n"] end),
      "content-length: ",
      Integer.to_string(IO.iodata_length(body)),
      "\r\ndate: ",
      http_date(),
      "\r\nconnection: ",
      if(keep_alive?, do: "keep-alive", else: "close"),
      "\r\n\r\n",
      if(head_only?, do: [], else: body)
    ]
  end

  defp reason_phrase(200), do: "OK"
  defp reason_phrase(400), do: "Bad Request"
  defp reason_phrase(404), do: "Not Found"
  defp reason_phrase(405), do: "Method Not Allowed"
  defp reason_phrase(408), do: "Request Timeout"
  defp reason_phrase(413), do: "Content Too Large"
  defp reason_phrase(431), do: "Request Header Fields Too Large"
  defp reason_phrase(500), do: "Internal Server Error"
  defp reason_phrase(501), do: "Not Implemented"
  defp reason_phrase(503), do: "Service Unavailable"
  defp reason_phrase(505), do: "HTTP Version Not Supported"

  @days ~w(Mon Tue Wed Thu Fri Sat Sun)
  @months ~w(Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec)

  # IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT" (RFC 9110, section 5.6.7).
  defp http_date do
    {{year, month, day} = date, {hour, minute, second}} = :calendar.universal_time()
    weekday = Enum.at(@days, :calendar.day_of_the_week(date) - 1)

    :io_lib.format("~s, ~2..0B ~s ~4..0B ~2..0B:~2..0B:~2..0B GMT", [
      weekday,
      day,
      Enum.at(@months, month - 1),
      year,
      hour,
      minute,
      second
    ])
  end

  defp now_ms, do: System.monotonic_time(:millisecond)
end
