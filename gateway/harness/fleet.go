package harness

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/carstore"
	"telematics/pkg/vehicle/fleet"
	"telematics/pkg/vehicle/link"
)

// Fleet runs cars with their local link until Stop.
type Fleet struct {
	Link   *link.Server
	Garage *vehicle.Garage
	store  *carstore.Store
	tmp    string
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// FleetOptions shape a fleet.
type FleetOptions struct {
	// Dir holds the cars' store; "" means a temporary directory that Stop removes
	// (MustStartFleet: the test's TempDir).
	Dir       string
	BrokerURL string
	// TLS verifies an ssl:// or wss:// BrokerURL (the cars' trusted CA).
	TLS    *tls.Config
	Creds  []protocol.Credentials
	Logger *slog.Logger
	// TelemetryInterval is how often each car reports; 0 means 2 s.
	TelemetryInterval time.Duration
	// MaxReconnectInterval caps the cars' reconnect backoff; 0 means 2 s (the drill waits for
	// the cars to come back; production cars keep mqttc's 30 s cap).
	MaxReconnectInterval time.Duration
	// JournalResendInterval: fleet.Config's; 0 means its default.
	JournalResendInterval time.Duration
}

// StartFleet starts the cars of o.Creds against o.BrokerURL, and their local link on loopback
// once every car is built.
func StartFleet(ctx context.Context, o FleetOptions) (*Fleet, error) {
	f := &Fleet{Garage: vehicle.NewGarage()}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.TelemetryInterval <= 0 {
		o.TelemetryInterval = 2 * time.Second
	}
	if o.MaxReconnectInterval <= 0 {
		o.MaxReconnectInterval = 2 * time.Second
	}
	dir := o.Dir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "fleet-harness-")
		if err != nil {
			return nil, err
		}
		dir, f.tmp = tmp, tmp
	}
	st, err := carstore.Open(filepath.Join(dir, carstore.File))
	if err != nil {
		f.removeTemp()
		return nil, err
	}
	f.store, f.Link = st, link.NewServer(f.Garage, log)
	fctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		_, err := fleet.Run(fctx, fleet.Config{BrokerURL: o.BrokerURL, TLS: o.TLS, Creds: o.Creds, Store: st, Garage: f.Garage,
			TelemetryInterval: o.TelemetryInterval, ConnectRate: 2000, Logger: log,
			MaxReconnectInterval: o.MaxReconnectInterval, JournalResendInterval: o.JournalResendInterval})
		if err != nil && !errors.Is(err, context.Canceled) {
			log.Error("fleet stopped", "err", err)
		}
	}()
	// The link serves the cars as fleet.Run builds them.
	if err := WaitFor(ctx, 15*time.Second, func() error {
		if n := len(f.Garage.VINs()); n < len(o.Creds) {
			return fmt.Errorf("%d of %d cars built", n, len(o.Creds))
		}
		return nil
	}); err != nil {
		f.Stop()
		return nil, err
	}
	if err := f.Link.Start("127.0.0.1:0"); err != nil {
		f.Stop()
		return nil, err
	}
	return f, nil
}

// MustStartFleet starts a fleet for a test; the test's cleanup stops it.
func MustStartFleet(t TB, o FleetOptions) *Fleet {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	f, err := StartFleet(context.Background(), o)
	if err != nil {
		t.Fatalf("start the fleet: %v", err)
	}
	t.Cleanup(f.Stop)
	return f
}

// Stop stops the link and the cars, closes their store and removes a temporary directory.
// It may be called more than once.
func (f *Fleet) Stop() {
	if f.cancel == nil {
		return
	}
	f.Link.Close()
	f.cancel()
	f.wg.Wait()
	f.store.Close()
	f.removeTemp()
	f.cancel = nil
}

func (f *Fleet) removeTemp() {
	if f.tmp != "" {
		os.RemoveAll(f.tmp)
		f.tmp = ""
	}
}
