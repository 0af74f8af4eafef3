from wasmstream.cli.commands import main

main()
