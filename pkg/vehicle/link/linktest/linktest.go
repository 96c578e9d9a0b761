// Package linktest puts simulated cars behind a real local-link server for tests: a Rig is
// vehicletest.VIN's car and vehicletest.OtherVIN's, on a store in a test's directory, behind a
// link.Server on 127.0.0.1:0, with a phone next to them.
package linktest

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"telematics/pkg/protocol"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/carstore"
	"telematics/pkg/vehicle/link"
	"telematics/pkg/vehicle/vehicletest"
)

// Rig is vehicletest.VIN's car (Car) and vehicletest.OtherVIN's (Other) behind a link server
// on 127.0.0.1:0, and a phone (the embedded LinkPhone) next to them.
type Rig struct {
	*vehicletest.LinkPhone
	Gateway *vehicletest.Gateway
	Store   *carstore.Store
	Car     *vehicle.Car
	Other   *vehicle.Car
	Link    *link.Server
}

// NewRig starts the link on the store in dir; both cars run on clock, and Car gets the cast's
// whitelist unless bare (Other always does). The rig stops when the test ends.
func NewRig(t testing.TB, gw *vehicletest.Gateway, clock *vehicletest.Clock, dir string, bare bool) *Rig {
	t.Helper()
	st, err := carstore.Open(filepath.Join(dir, carstore.File))
	if err != nil {
		t.Fatal(err)
	}
	r := &Rig{Gateway: gw, Store: st}
	r.Car = NewCar(t, st, gw.Creds(t, vehicletest.VIN), clock)
	if !bare {
		vehicletest.Install(t, r.Car, gw.Whitelist(t, vehicletest.WhitelistSpec{}))
	}
	r.Other = NewCar(t, st, gw.Creds(t, vehicletest.OtherVIN), clock)
	vehicletest.Install(t, r.Other, gw.Whitelist(t, vehicletest.WhitelistSpec{VIN: vehicletest.OtherVIN}))
	garage := vehicle.NewGarage()
	garage.Put(r.Car)
	garage.Put(r.Other)
	r.Link = link.NewServer(garage, nil)
	if err := r.Link.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	r.LinkPhone = vehicletest.NewLinkPhone(r.Link.URL(), clock)
	t.Cleanup(r.Stop)
	return r
}

// Stop closes the link and the store (a car that is switched off); idempotent.
func (r *Rig) Stop() {
	r.Link.Close()
	r.Store.Close()
}

// NewCar makes a car on clock with what st holds of it (no whitelist for a new car), and a
// fixed random source.
func NewCar(t testing.TB, st *carstore.Store, creds protocol.Credentials, clock *vehicletest.Clock) *vehicle.Car {
	t.Helper()
	car, err := vehicle.NewCar(st, creds, vehicle.CarOptions{Clock: clock, Rand: rand.New(rand.NewPCG(1, 2))})
	if err != nil {
		t.Fatal(err)
	}
	return car
}
