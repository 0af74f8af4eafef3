from wasmstream.cli.main import main

main()
