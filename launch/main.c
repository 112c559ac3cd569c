/* ferry: entry point (placeholder until the CLI lands). */
#include <stdio.h>
int main(void) { printf("ferry %s\n", FERRY_VERSION); return 0; }
