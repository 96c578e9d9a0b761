package vehicle

import (
	"math/rand/v2"
	"testing"

	"telematics/pkg/protocol"
	"telematics/pkg/vehicle/carstore"
	"telematics/pkg/vehicle/vehicletest"
)

// newTestCar makes a car with what the store holds of it: no whitelist for a new car.
func newTestCar(t testing.TB, st *carstore.Store, creds protocol.Credentials, clock *vehicletest.Clock) *Car {
	t.Helper()
	car, err := NewCar(st, creds, CarOptions{Clock: clock, Rand: rand.New(rand.NewPCG(1, 2))})
	if err != nil {
		t.Fatal(err)
	}
	return car
}

// newKeyedCar makes vehicletest.VIN's car and gives it the cast's whitelist (version 1).
func newKeyedCar(t testing.TB, st *carstore.Store, gw *vehicletest.Gateway, clock *vehicletest.Clock) *Car {
	t.Helper()
	car := newTestCar(t, st, gw.Creds(t, vehicletest.VIN), clock)
	vehicletest.Install(t, car, gw.Whitelist(t, vehicletest.WhitelistSpec{}))
	return car
}
