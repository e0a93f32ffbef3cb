defmodule SampleApp.JSON do
  @moduledoc """
  Minimal JSON encoder for the handful of response bodies this app produces.

  hex.pm is unreachable from the build hosts, so Jason is not an option. Supports maps
  (atom or string keys), lists, strings, integers, floats, booleans and nil.
  """

  @spec encode(term()) :: iodata()
  def encode(value) when is_map(value) do
    members =
      value
      |> Enum.sort_by(fn {key, _} -> key_string(key) end)
      |> Enum.map(fn {key, item} -> [string(key_string(key)), ?:, encode(item)] end)

    [?{, Enum.intersperse(members, ?,), ?}]
  end

  def encode(value) when is_list(value),
    do: [?[, Enum.intersperse(Enum.map(value, &encode/1), ?,), ?]]

  def encode(value) when is_binary(value), do: string(value)
  def encode(value) when is_integer(value), do: Integer.to_string(value)
  def encode(value) when is_float(value), do: :erlang.float_to_binary(value, [:short])
  def encode(true), do: "true"
  def encode(false), do: "false"
  def encode(nil), do: "null"
  def encode(value) when is_atom(value), do: string(Atom.to_string(value))

  defp key_string(key) when is_atom(key), do: Atom.to_string(key)
  defp key_string(key) when is_binary(key), do: key

  defp string(value), do: [?", escape(value, []), ?"]

  defp escape(<<>>, acc), do: Enum.reverse(acc)
  defp escape(<<?", rest::binary>>, acc), do: escape(rest, ["\\\"" | acc])
  defp escape(<<?\\, rest::binary>>, acc), do: escape(rest, ["\\\\" | acc])
  defp escape(<<?\n, rest::binary>>, acc), do: escape(rest, ["\\n" | acc])
  defp escape(<<?\r, rest::binary>>, acc), do: escape(rest, ["\\r" | acc])
  defp escape(<<?\t, rest::binary>>, acc), do: escape(rest, ["\\t" | acc])
  defp escape(<<?\b, rest::binary>>, acc), do: escape(rest, ["\\b" | acc])
  defp escape(<<?\f, rest::binary>>, acc), do: escape(rest, ["\\f" | acc])

  defp escape(<<char, rest::binary>>, acc) when char < 0x20 do
    escape(rest, [unicode_escape(char) | acc])
  end

  # U+2028/U+2029 are valid JSON but break JavaScript string literals; escaping is harmless.
  defp escape(<<char::utf8, rest::binary>>, acc) when char in [0x2028, 0x2029] do
    escape(rest, [unicode_escape(char) | acc])
  end

  defp escape(<<char::utf8, rest::binary>>, acc), do: escape(rest, [<<char::utf8>> | acc])

  # Values come from the environment (SLOT, node names) and may not be valid UTF-8; JSON
  # must be, so invalid bytes become U+FFFD instead of producing an unparsable body.
  defp escape(<<_invalid, rest::binary>>, acc), do: escape(rest, ["\\ufffd" | acc])

  defp unicode_escape(char) do
    hex = char |> Integer.to_string(16) |> String.downcase() |> String.pad_leading(4, "0")
    "\\u" <> hex
  end
end
