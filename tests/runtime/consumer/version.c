/* Prints the header's version macros: "BHVIT_VERSION_STRING BHVIT_VERSION". */
#include <stdio.h>

#include <bhvit_runtime.h>

int main(void) {
  printf("%s %d\n", BHVIT_VERSION_STRING, BHVIT_VERSION);
  return 0;
}
