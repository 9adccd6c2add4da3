from fleetloop.cli import main

main()
