from qllm.server.main import cli

cli()
