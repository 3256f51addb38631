from etrmtrm_cli.cli import main

main()
