defmodule SampleApp.Release do
  @moduledoc """
  Release tasks, run with `bin/sample_app eval "SampleApp.Release.migrate()"` the way a Phoenix
  app runs its Ecto migrations: in a VM of their own, with the slot's configuration and
  secrets, before traffic moves to the new release.

  The sample app has no database: `migrate/0` proves what a migration needs (the new release's
  code, its runtime configuration, its secrets) and leaves a line in `migrations.log` in the
  working directory (the slot's state directory), so a test can count where and how often it
  ran. `MIGRATION_FAIL=1` makes it fail, as a broken migration would.
  """

  @log "migrations.log"

  @spec migrate() :: :ok
  def migrate do
    Application.load(:sample_app)
    version = to_string(Application.spec(:sample_app, :vsn))
    secret? = is_binary(Application.get_env(:sample_app, :secret_key_base))

    if System.get_env("MIGRATION_FAIL") in ["1", "true"] do
      IO.puts(:stderr, "migration of #{version} failed: relation \"orders\" already exists")
      System.halt(1)
    end

    line = "version=#{version} at=#{System.os_time(:second)} secret_key_base_set=#{secret?}\n"
    File.write!(@log, line, [:append])
    IO.puts("migrated to #{version} (secret_key_base set: #{secret?})")
    :ok
  end
end
