//! Usher's examples: the `lms-sim` pod simulator and the peak-hour demo
//! (the balancer, the autoscaler in local mode, simulated pods and a goose
//! load test on one machine).

pub mod lms_sim;
pub mod peak_hour;
