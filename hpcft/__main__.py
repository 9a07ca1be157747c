from hpcft.cli import main

main()
