from fleetloop.cli import app

app(prog_name="fleetloop")
