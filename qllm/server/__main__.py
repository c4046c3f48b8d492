from qllm.server.main import main

main()
