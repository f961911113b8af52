"""Entry point ui: the MLflow UI on this project's store until Ctrl-C; with tunnel=ngrok also
at a public URL (token from the NGROK_AUTHTOKEN environment variable)."""
import signal
import sys

from unet.config import pipeline as config
from unet.secrets import mask
from unet.tracking import cli, runs, ui


def serve_ui() -> None:
    cfg = config.load("ui", cli.overrides("ui"))
    store = runs.store_uri()
    # SIGTERM (a test, a notebook stopping the cell) ends like Ctrl-C, through `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    tunnel = (ui.Tunnel(cfg.port, cfg.public) if cfg.tunnel == "ngrok"   # fails before
              else None)                                                   # starting anything
    server = ui.start_server(ui.server_command(store, cfg.host, cfg.port,
                                               tunnel.host if tunnel else None))
    try:
        url = ui.local_url(cfg.host, cfg.port)
        ui.wait_until_up(server, f"{url}/health")
        print(f"MLflow UI for {mask(store)}\n  local:  {url}"
              + (f"\n  public: {tunnel.public_url}" if tunnel else "")
              + "\nCtrl-C to stop.", flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        ui.stop_server(server)
        if tunnel:
            tunnel.close()


if __name__ == "__main__":
    cli.main(serve_ui)
