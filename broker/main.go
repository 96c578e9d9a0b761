// Command broker is the standalone MQTT broker: mochi-mqtt with the project's token
// authentication and topic ACL (package telematics/pkg/broker). The gateway embeds the same
// broker by default; this binary is for docker-compose and for a broker on its own machine.
//
//	broker --gateway-pubkey DATA/gateway.pub [--gateway-pubkey OLD.pub] [--config broker.yaml]
//	       [--mqtt-addr 127.0.0.1:1883|off] [--ws-addr 127.0.0.1:1882|off] [--state-file FILE]
//	       [--tls-cert FILE --tls-key FILE [--client-ca FILE]] [--tls-mqtt-addr 127.0.0.1:8883|off]
//
// With --tls-cert and --tls-key it also listens for MQTT over TLS (8883) and over secure
// WebSocket (8884); SIGHUP reads the certificate files again without dropping connections. A
// plain-text listener on a non-loopback address needs --allow-plaintext.
//
// Settings come from the defaults, then the YAML file, then the environment (BROKER_ and the
// key: BROKER_MQTT_ADDR, BROKER_GATEWAY_PUBKEY with comma-separated files, ...), then the
// flags; `broker --help` lists them all. Exit status: 0 after SIGINT/SIGTERM and for --help,
// 2 for a usage or configuration error (no gateway key included), 1 when the broker cannot
// start.
package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"telematics/pkg/broker"
	"telematics/pkg/cmdline"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cmdline.Execute(ctx, newRoot(os.Environ()), os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// newRoot is the broker's command line; environ is the environment cmdline.Execute is given.
func newRoot(environ []string) *cobra.Command {
	root := cmdline.NewRoot("broker", "The standalone MQTT broker of the telematics gateway", "BROKER")
	root.Long = `The standalone MQTT broker: it admits cars and apps by the tokens the gateway signs,
checked with the gateway's public key (--gateway-pubkey, twice during a key rotation), and
enforces the topic ACL. It needs no database and keeps running while the gateway is down.

Settings: the defaults shown below, then the YAML file (--config; configs/broker.yaml lists
every key), then the environment (each flag's variable is shown beside it), then the flags.
A listener address is HOST:PORT, or off to disable it.

TLS: with --tls-cert and --tls-key (PEM; the key 0600) the broker also serves MQTT over TLS
(--tls-mqtt-addr) and over secure WebSocket (--tls-ws-addr), TLS 1.2 at least; --client-ca
is the gateway's device CA (device-ca.crt, in its data and public directories): cars connect by
the device certificates it signed (gateway admin vehicle add --cert), and a reissued car's old
certificate is refused (kept across restarts with --state-file). SIGHUP reloads the three
files; connections stay.
A plain-text listener (--mqtt-addr, --ws-addr) on a non-loopback address is refused unless
--allow-plaintext says so.`
	root.Example = `  broker --gateway-pubkey data/gateway.pub
  broker --config configs/broker.yaml --gateway-pubkey data/gateway.pub --ws-addr off
  broker --gateway-pubkey data/gateway.pub --tls-cert data/server.pem --tls-key data/server.key --mqtt-addr off
  broker --gateway-pubkey data/gateway.pub --tls-cert data/server.pem --tls-key data/server.key --client-ca data/device-ca.crt
  BROKER_GATEWAY_PUBKEY=data/gateway.pub,data/gateway.prev.pub broker --state-file broker/state.json`
	root.Args = cobra.NoArgs
	broker.AddFlags(root.Flags())
	root.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := broker.LoadConfig(cmd.Flags(), environ)
		if err != nil {
			return cmdline.WithExitCode(2, err)
		}
		keys, err := broker.LoadKeys(cfg.GatewayPubKeys)
		if err != nil {
			return cmdline.WithExitCode(2, err)
		}
		logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
		// SIGHUP reloads the TLS files; caught from here on, so that one arriving during the
		// start does not end the process.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		b, err := broker.New(cfg, keys, logger)
		if err != nil {
			return cmdline.WithExitCode(2, err)
		}
		defer b.Close()
		// Cars whose credentials the gateway reissued: their old tokens are refused here too,
		// also after a restart with the gateway away when a state file is set.
		if err := b.FollowCarTokens(keys); err != nil {
			return err
		}
		if err := b.Start(); err != nil {
			return err
		}
		for waiting := true; waiting; {
			select {
			case <-cmd.Context().Done():
				waiting = false
			case <-hup:
				if err := b.ReloadTLS(); err != nil {
					logger.Error("TLS certificates not reloaded; the previous ones stay", "error", err)
				}
			}
		}
		logger.Info("signal received; shutting down")
		return b.Close()
	}
	return root
}
