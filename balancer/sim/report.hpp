// Report: tern-sim's results as a table for people and a CSV for plots.
//
// Thread-safety: plain functions.
#pragma once

#include <ostream>
#include <vector>

#include "cluster_sim.hpp"

namespace tern::sim {

void PrintTable(std::ostream& out, const std::vector<SimResult>& results);
void WriteCsv(std::ostream& out, const std::vector<SimResult>& results);

}  // namespace tern::sim
