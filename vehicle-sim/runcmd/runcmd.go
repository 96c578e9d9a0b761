// Package runcmd is `vehicle-sim run`: it finds the cars to run (a credentials file, or cars
// provisioned once through the gateway admin API and kept in the data dir), opens the cars'
// store, opens the cars' local link (link.Server) and runs them against the broker
// (fleet.Fleet) until the context ends, printing their progress.
package runcmd

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"telematics/pkg/api"
	"telematics/pkg/clock"
	"telematics/pkg/cmdline"
	"telematics/pkg/protocol"
	"telematics/pkg/tlsconf"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/carstore"
	"telematics/pkg/vehicle/fleet"
	"telematics/pkg/vehicle/link"
	"telematics/vehicle-sim/config"
)

// ProvisionBatch is how many cars one admin API request asks for; each batch is stored before
// the next is requested, so an interrupted provisioning loses nothing it got.
const ProvisionBatch = 500

// Options are Run's dependencies.
type Options struct {
	// Progress receives the connect progress and the live status line (stdout).
	Progress io.Writer
	// Logger receives per-car events.
	Logger *slog.Logger
	// HTTPClient talks to the gateway admin API; a client with a 60 s timeout when nil.
	HTTPClient *http.Client
	// Clock is the cars' clock (fleet.Config.Clock); the real one when nil.
	Clock clock.Clock
	// Dial connects a car; mqttc.Dial when nil.
	Dial fleet.DialFunc
	// Garage, when set, receives the cars as they are built, so that an in-process caller (a
	// drill) can reach them, e.g. with its own link.Server. The link Run opens itself
	// (link_addr) serves the same garage.
	Garage *vehicle.Garage
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return o
}

// httpClient is o.HTTPClient, else a client with a 60 s timeout that verifies an https://
// gateway with cfg.CA.
func (o Options) httpClient(cfg config.Config) (*http.Client, error) {
	if o.HTTPClient != nil {
		return o.HTTPClient, nil
	}
	return tlsconf.HTTPClient(cfg.CA, 60*time.Second)
}

// brokerTLS is the cars' TLS configuration for an ssl:// or wss:// broker: cfg.CA, else the
// ca_pem of the credentials, else nil (the system's roots). nil for a plain broker URL.
func brokerTLS(cfg config.Config, creds []protocol.Credentials) (*tls.Config, error) {
	u, err := url.Parse(cfg.Broker)
	if err != nil || !tlsconf.SecureScheme(u.Scheme) {
		return nil, nil
	}
	if cfg.CA != "" {
		return tlsconf.ClientConfig(cfg.CA)
	}
	for _, c := range creds {
		if c.CAPEM != "" {
			return tlsconf.ClientConfigPEM([]byte(c.CAPEM))
		}
	}
	return nil, nil
}

// Run runs the fleet cfg describes until ctx ends. cfg must have passed ValidateRun.
func Run(ctx context.Context, cfg config.Config, opts Options) error {
	opts = opts.withDefaults()
	// Read the fleet file before anything is created on disk: a typo in its name should not
	// leave an empty data dir behind.
	var fromFile []protocol.Credentials
	if cfg.Run.Fleet != "" {
		var err error
		if fromFile, err = LoadFile(cfg.Run.Fleet); err != nil {
			return err
		}
	}
	store, err := carstore.Open(filepath.Join(cfg.DataDir, carstore.File))
	if err != nil {
		return err
	}
	defer store.Close()

	var creds []protocol.Credentials
	if fromFile != nil {
		if err := store.SaveCredentials(fromFile...); err != nil {
			return fmt.Errorf("keep fleet credentials: %w", err)
		}
		creds = fromFile
	} else {
		creds, err = provisioned(ctx, store, cfg, opts)
		if err != nil {
			return err
		}
	}
	if cfg.Run.Cert != "" {
		if creds, err = withCertFiles(creds, cfg.Run.Cert, cfg.Run.Key); err != nil {
			return err
		}
	}
	garage := opts.Garage
	if garage == nil {
		garage = vehicle.NewGarage()
	}
	if cfg.LinkEnabled() {
		srv := link.NewServer(garage, opts.Logger)
		if err := srv.Start(cfg.LinkAddr); err != nil {
			return fmt.Errorf("%w (pass another --link-addr, or off to run without the local link)", err)
		}
		// Deferred after the store's Close, so it runs before it: no local command can reach a
		// closed store.
		defer srv.Close()
		fmt.Fprintf(opts.Progress, "local link on %s (POST /v1/link/{vin}/challenge, /v1/link/{vin}/command)\n", srv.URL())
	}
	tlsCfg, err := brokerTLS(cfg, creds)
	if err != nil {
		return err
	}
	fmt.Fprintf(opts.Progress, "running %s against %s (data %s)\n", cmdline.Plural(len(creds), "car"), cfg.Broker, store.Path())
	f, err := fleet.New(fleet.Config{
		BrokerURL:         cfg.Broker,
		TLS:               tlsCfg,
		Creds:             creds,
		Store:             store,
		TelemetryInterval: cfg.Run.TelemetryInterval,
		ConnectRate:       cfg.Run.ConnectRate,
		Logger:            opts.Logger,
		Clock:             opts.Clock,
		Dial:              opts.Dial,
		Garage:            garage,
	})
	if err != nil {
		return err
	}
	_, err = runWithProgress(ctx, f, opts.Progress, statusInterval)
	return err
}

// provisioned returns cfg.Run.Cars cars: those the store already has (a restart reuses them),
// topped up through the gateway admin API.
func provisioned(ctx context.Context, store *carstore.Store, cfg config.Config, opts Options) ([]protocol.Credentials, error) {
	have, err := store.Credentials()
	if err != nil {
		return nil, err
	}
	want := cfg.Run.Cars
	if len(have) >= want {
		return have[:want], nil
	}
	token, err := readToken(cfg.TokenFile)
	if err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	hc, err := opts.httpClient(cfg)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(opts.Progress, "provisioning %s through %s (%d already in %s)\n",
		cmdline.Plural(want-len(have), "car"), cfg.Gateway, len(have), cfg.DataDir)
	for len(have) < want {
		n := min(want-len(have), ProvisionBatch)
		got, err := Provision(ctx, hc, cfg.Gateway, token, n)
		if err != nil {
			return nil, err
		}
		if err := store.SaveCredentials(got...); err != nil {
			return nil, fmt.Errorf("keep provisioned credentials: %w", err)
		}
		have = append(have, got...)
	}
	return have, nil
}

func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read the gateway admin token: %w (it is in the gateway's data dir; pass --token-file)", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("admin token file %s is empty", path)
	}
	return token, nil
}

// LoadFile reads a JSON list of credentials, as `gateway admin vehicle add --json` prints it,
// and checks that every car can run: a well-formed VIN, a client id, a token and the gateway
// key.
func LoadFile(path string) ([]protocol.Credentials, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read fleet file: %w", err)
	}
	var creds []protocol.Credentials
	if err := json.Unmarshal(b, &creds); err != nil {
		return nil, fmt.Errorf("fleet file %s is not a JSON list of credentials (make one with `gateway admin vehicle add --json`): %w", path, err)
	}
	if len(creds) == 0 {
		return nil, fmt.Errorf("fleet file %s lists no cars", path)
	}
	normaliseVINs(creds)
	if err := checkCredentials(creds); err != nil {
		return nil, fmt.Errorf("fleet file %s: %w", path, err)
	}
	return creds, nil
}

// normaliseVINs writes VINs in capitals, as the gateway issues them (a hand-edited file may
// have them in lower case), and the client id and user name that are the VIN with them: the
// car's token names the VIN in capitals.
func normaliseVINs(creds []protocol.Credentials) {
	for i := range creds {
		c := &creds[i]
		vin := strings.ToUpper(strings.TrimSpace(c.VIN))
		if strings.EqualFold(c.ClientID, vin) {
			c.ClientID = vin
		}
		if strings.EqualFold(c.Username, vin) {
			c.Username = vin
		}
		c.VIN = vin
	}
}

// checkCredentials reports every unusable entry (at most ten).
func checkCredentials(creds []protocol.Credentials) error {
	var errs []error
	seen := make(map[string]bool, len(creds))
	for i, c := range creds {
		var missing []string
		if !protocol.ValidVIN(c.VIN) {
			missing = append(missing, "a well-formed vin")
		}
		if c.ClientID == "" {
			missing = append(missing, "client_id")
		}
		if c.Token == "" {
			missing = append(missing, "token")
		}
		if c.GatewayKey == "" {
			missing = append(missing, "gateway_key")
		}
		if len(missing) > 0 {
			errs = append(errs, fmt.Errorf("car %d (%q) lacks %s", i, c.VIN, strings.Join(missing, ", ")))
		} else if seen[c.VIN] {
			errs = append(errs, fmt.Errorf("car %d: vin %s listed twice", i, c.VIN))
		}
		seen[c.VIN] = true
		if len(errs) == 10 {
			errs = append(errs, errors.New("…"))
			break
		}
	}
	return errors.Join(errs...)
}

// Provision asks the gateway admin API for n new cars: POST {gateway}/v1/admin/vehicles with
// {"count": n}, authorized by the admin token; the answer is a JSON list of credentials.
func Provision(ctx context.Context, client *http.Client, gateway, token string, n int) ([]protocol.Credentials, error) {
	c := api.NewClient(gateway, token)
	c.HTTP = client
	creds, err := c.AddVehicles(ctx, api.AddVehiclesRequest{Count: n})
	var refused *api.Error
	var unreachable *url.Error
	var badCert *tls.CertificateVerificationError
	switch {
	case errors.As(err, &badCert):
		return nil, fmt.Errorf("the gateway's certificate at %s did not verify: %w (pass its CA certificate with --ca, the gateway's DATA/ca.pem)", gateway, badCert)
	case errors.As(err, &refused):
		detail, hint := "", ""
		if m := cmp.Or(refused.Message, string(refused.Reason)); m != "" {
			detail = ": " + m
		}
		if refused.Status == http.StatusUnauthorized || refused.Status == http.StatusForbidden {
			hint = " (is the admin token current? pass --token-file)"
		}
		return nil, fmt.Errorf("gateway refused to provision cars: %d %s%s%s", refused.Status, http.StatusText(refused.Status), detail, hint)
	case errors.As(err, &unreachable):
		return nil, fmt.Errorf("reach the gateway at %s: %w (is `gateway serve` running? pass --gateway)", gateway, unreachable)
	case err != nil:
		return nil, fmt.Errorf("provisioning answer: %w", err)
	}
	if len(creds) != n {
		return nil, fmt.Errorf("asked the gateway for %d cars, got %d", n, len(creds))
	}
	if err := checkCredentials(creds); err != nil {
		return nil, fmt.Errorf("provisioning answer: %w", err)
	}
	return creds, nil
}
