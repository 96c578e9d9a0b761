// Command broker is the standalone MQTT broker: mochi-mqtt with the project's token
// authentication and topic ACL (package telematics/pkg/broker). The gateway embeds the same
// broker by default; this binary is for docker-compose and for a broker on its own machine.
//
//	broker --gateway-pubkey DATA/gateway.pub [--gateway-pubkey OLD.pub] [--config broker.yaml]
//	       [--mqtt-addr 127.0.0.1:1883] [--ws-addr 127.0.0.1:1882] [--state-file FILE]
//
// Settings come from the defaults, then the YAML file, then BROKER_MQTT_ADDR, BROKER_WS_ADDR,
// BROKER_GATEWAY_PUBKEY (comma-separated files) and BROKER_STATE_FILE, then the flags;
// broker.Config lists the YAML
// keys. Exit status: 0 after SIGINT/SIGTERM, 2 for a configuration error (no gateway key
// included), 1 when the broker cannot start.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"telematics/pkg/broker"
)

func main() {
	os.Exit(run())
}

func run() int {
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))

	cfg, err := broker.LoadConfig(os.Args[1:], os.LookupEnv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "broker:", err)
		return 2
	}
	keys, err := broker.LoadKeys(cfg.GatewayPubKeys)
	if err != nil {
		fmt.Fprintln(os.Stderr, "broker:", err)
		return 2
	}

	b, err := broker.New(cfg, keys, logger)
	if err != nil {
		fmt.Fprintln(os.Stderr, "broker:", err)
		return 2
	}
	defer b.Close()
	// Cars whose credentials the gateway reissued: their old tokens are refused here too, also
	// after a restart with the gateway away when a state file is set.
	if err := b.FollowCarTokens(keys); err != nil {
		fmt.Fprintln(os.Stderr, "broker:", err)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := b.Start(); err != nil {
		logger.Error("broker failed to start", "error", err)
		return 1
	}
	<-ctx.Done()
	logger.Info("signal received; shutting down")
	if err := b.Close(); err != nil {
		logger.Error("broker close", "error", err)
		return 1
	}
	return 0
}
