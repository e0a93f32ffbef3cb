defmodule SampleApp.MixProject do
  use Mix.Project

  # build.sh passes the release version through the environment so that one source tree
  # can produce tarballs of many versions (the blue-green tests deploy two at once).
  @version System.get_env("SAMPLE_APP_VERSION", "0.0.0-dev")

  def project do
    [
      app: :sample_app,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      # No dependencies on purpose: the build hosts cannot reach hex.pm.
      deps: [],
      releases: releases()
    ]
  end

  def application do
    [
      # :ssl for TLS distribution (-proto_dist inet_tls), which loads it at boot.
      extra_applications: [:logger, :ssl],
      mod: {SampleApp.Application, []}
    ]
  end

  defp releases do
    [
      sample_app: [
        # The target hosts have no Erlang installed: ship the runtime inside the tarball.
        include_erts: true,
        include_executables_for: [:unix],
        steps: [:assemble, :tar]
      ]
    ]
  end
end
